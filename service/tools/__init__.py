"""Operator and developer tools: publishing commands, reading outcomes, the demo."""
