"""The development kit of points-adjuster: the PAS sandbox, local infrastructure, dev keys,
the demo. Never imported by the product (``service``).
"""
