import pytest

from shared.errors import InvalidInput
from shared.workflows import coerce_cli_value, input_json_schema, load_text, validate_inputs

WF = load_text(
    """
workflows:
  w:
    inputs:
      topic: {type: string, required: true, max_length: 5}
      words: {type: integer, default: 200, minimum: 10}
      ratio: {type: number, default: 0.5}
      loud: {type: boolean, default: false}
      tags: {type: array, default: []}
      mode: {type: string, enum: [fast, slow], default: fast}
    steps: {a: {run: x}}
"""
)["w"]


def test_defaults_are_filled_and_types_kept():
    assert validate_inputs(WF, {"topic": "sea", "ratio": 1}) == {
        "topic": "sea", "words": 200, "ratio": 1.0, "loud": False, "tags": [], "mode": "fast",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("inputs", "field", "fragment"),
    [
        ({}, "inputs.topic", "required"),
        ({"topic": 3}, "inputs.topic", "type string"),
        ({"topic": "toolong"}, "inputs.topic", "at most 5"),
        ({"topic": "a", "words": True}, "inputs.words", "type integer"),
        ({"topic": "a", "words": 3}, "inputs.words", "≥ 10"),
        ({"topic": "a", "mode": "medium"}, "inputs.mode", "one of"),
        ({"topic": "a", "colour": "red"}, "inputs.colour", "unknown input"),
        ("not a dict", "inputs", "JSON object"),
    ],
)
def test_invalid_inputs_name_the_field(inputs, field, fragment):
    with pytest.raises(InvalidInput) as err:
        validate_inputs(WF, inputs)
    assert err.value.field == field
    assert fragment in err.value.message


def test_cli_values_are_coerced_to_declared_types():
    assert coerce_cli_value(WF, "words", "42") == 42
    assert coerce_cli_value(WF, "ratio", "0.25") == 0.25
    assert coerce_cli_value(WF, "loud", "yes") is True
    assert coerce_cli_value(WF, "tags", '["a"]') == ["a"]
    assert coerce_cli_value(WF, "topic", "42") == "42"
    with pytest.raises(InvalidInput, match="not a valid integer"):
        coerce_cli_value(WF, "words", "many")
    with pytest.raises(InvalidInput, match="unknown input"):
        coerce_cli_value(WF, "nope", "1")


def test_json_schema_for_forms():
    schema = input_json_schema(WF)
    assert schema["required"] == ["topic"]
    assert schema["properties"]["words"] == {"type": "integer", "default": 200, "minimum": 10}
    assert schema["properties"]["mode"]["enum"] == ["fast", "slow"]
    assert schema["additionalProperties"] is False
