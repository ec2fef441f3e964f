"""docs/asyncapi.yaml is a valid AsyncAPI 3.0 document and stays true to the code: the topic
names are the settings' defaults, the payloads are the files in schemas/, the headers are the
names the service writes and reads."""

from __future__ import annotations

import inspect
import json
import re
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

import service
from service.domain.command import account_ref
from service.kafka import deadletter
from service.kafka.publisher import _Event
from service.kafka.sizing import TRUNCATED
from service.settings import KafkaSettings
from service.tracing import TRACEPARENT, TRACESTATE

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
CHANNEL_TOPICS = {
    "commands": "command_topic",
    "completed": "completed_topic",
    "failed": "failed_topic",
    "deadLetters": "dead_letter_topic",
    "review": "review_topic",
}


@cache
def _document() -> dict[str, Any]:
    loaded = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _resolve(pointer: str) -> Any:
    """The target of an internal ``#/a/b`` reference."""
    assert pointer.startswith("#/"), pointer
    node: Any = _document()
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _messages() -> dict[str, dict[str, Any]]:
    messages = _document()["components"]["messages"]
    assert isinstance(messages, dict)
    return messages


def test_the_document_validates_against_the_asyncapi_3_models() -> None:
    with warnings.catch_warnings():  # the models' own field names shadow pydantic's
        warnings.simplefilter("ignore", UserWarning)
        from asyncapi3 import AsyncAPI3  # type: ignore[import-untyped]

    model = AsyncAPI3.model_validate(_document())
    assert model.asyncapi == "3.0.0"
    broken = {**_document(), "operations": {"x": {"action": "publish", "channel": {}}}}
    with pytest.raises(ValueError, match="validation error"):
        AsyncAPI3.model_validate(broken)


def test_required_fields_and_every_reference_resolve() -> None:
    document = _document()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "points-adjuster"
    assert document["info"]["version"] == service.__version__
    for ref in _refs(document):
        if ref.startswith("#/"):
            assert _resolve(ref) is not None, ref
        else:
            assert (DOCUMENT.parent / ref).is_file(), f"{ref} does not exist"


def test_the_topic_names_are_the_settings_defaults() -> None:
    defaults = KafkaSettings()
    channels = _document()["channels"]
    assert set(channels) == set(CHANNEL_TOPICS)
    for channel, attribute in CHANNEL_TOPICS.items():
        assert channels[channel]["address"] == getattr(defaults, attribute), channel
        setting = f"PA_KAFKA__{attribute.upper()}"
        assert setting in channels[channel]["title"], channel


def test_each_channel_has_one_operation_the_service_receives_or_sends() -> None:
    operations = _document()["operations"]
    by_channel = {op["channel"]["$ref"]: op["action"] for op in operations.values()}
    assert by_channel == {
        "#/channels/commands": "receive",
        "#/channels/completed": "send",
        "#/channels/failed": "send",
        "#/channels/deadLetters": "send",
        "#/channels/review": "send",
    }
    for operation in operations.values():
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")


def test_the_payloads_are_the_schema_files_and_every_schema_is_described() -> None:
    described = set()
    for name, message in _messages().items():
        payload = message["payload"]
        if "schemaFormat" not in payload:
            continue
        assert payload["schemaFormat"] == AVRO_FORMAT
        path = (DOCUMENT.parent / payload["schema"]["$ref"]).resolve()
        assert path.parent == (ROOT / "schemas").resolve(), path
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert schema["name"] == message["name"] == name
        described.add(path.name)
    assert described == {path.name for path in (ROOT / "schemas").glob("*.avsc")}


def test_the_dead_letter_headers_are_the_codes() -> None:
    written = {
        value
        for name, value in vars(deadletter).items()
        if name.isupper()
        and isinstance(value, str)
        and value.startswith("pa.")
        and name != "PREFIX"
    } | {TRUNCATED}
    documented = set(_document()["components"]["schemas"]["DeadLetterHeaders"]["properties"])
    assert documented == written
    assert deadletter.PREFIX == "pa."


def test_the_outcome_and_command_headers_are_the_codes() -> None:
    source = inspect.getsource(_Event.build)
    literal_names = set(re.findall(r'\(\s*"([a-z_.]+)",', source))
    schemas = _document()["components"]["schemas"]
    outcome = set(schemas["OutcomeHeaders"]["properties"])
    assert outcome == literal_names | {TRACEPARENT, TRACESTATE, TRUNCATED}
    assert set(schemas["OutcomeHeaders"]["properties"]["event_type"]["enum"]) == {
        "completed",
        "failed",
    }
    assert set(schemas["TraceHeaders"]["properties"]) == {TRACEPARENT, TRACESTATE}


def test_the_key_pattern_is_the_account_reference() -> None:
    pattern = _document()["components"]["schemas"]["AccountRefKey"]["pattern"]
    assert re.fullmatch(pattern, account_ref("5500000000000004"))
    assert not re.fullmatch(pattern, "5500000000000004")
