import pytest

from shared.errors import WorkflowFileError
from shared.workflows import load_files, load_text

from ..helpers import EXAMPLES

GOOD = """
workflows:
  essay:
    inputs:
      topic: {type: string, required: true}
    loop:
      max_attempts: 3
      pass_threshold: 0.8
      produce: {call: "pkg.mod:produce"}
      evaluate: {call: "pkg.mod:evaluate"}
  release:
    steps:
      build: {run: "make"}
      unit: {run: ["pytest", "-q"], needs: [build], retries: 2}
      docs: {run: "make docs", needs: [build]}
      publish: {run: "make publish", needs: [unit, docs]}
"""


def test_loads_loop_and_graph():
    wfs = load_text(GOOD, "good.yaml")
    assert wfs["essay"].kind == "loop"
    assert wfs["essay"].loop.max_attempts == 3
    release = wfs["release"]
    assert release.kind == "steps"
    assert release.step_order() == ["build", "unit", "docs", "publish"]
    assert release.downstream_of("unit") == ["unit", "publish"]
    assert release.steps["unit"].retries == 2


def test_examples_file_is_valid():
    assert {"essay", "release", "sleepy"} <= set(load_files([EXAMPLES]))


@pytest.mark.parametrize(
    ("text", "workflow", "field", "fragment"),
    [
        ("workflows: {w: {steps: {a: {rn: x}}}}", "w", "steps.a.rn", "unknown key"),
        ("workflows: {w: {steps: {a: {run: x, needs: [b]}, b: {run: y, needs: [a]}}}}",
         "w", "steps.a.needs", "cycle"),
        ("workflows: {w: {steps: {a: {run: x, needs: [zz]}}}}", "w", "steps.a.needs", "'zz'"),
        ("workflows: {w: {steps: {a: {run: x, retries: many}}}}", "w", "steps.a.retries",
         "integer"),
        ("workflows: {w: {steps: {a: {run: x, call: 'a:b'}}}}", "w", "steps.a", "exactly one"),
        ("workflows: {w: {steps: {a: {call: nocolon}}}}", "w", "steps.a.call",
         "module:function"),
        ("workflows: {w: {loop: {produce: {call: 'a:b'}}}}", "w", "loop.evaluate", "missing"),
        ("workflows: {w: {loop: {produce: {call: 'a:b', needs: [x]}, evaluate: {call: 'a:b'}}}}",
         "w", "loop.produce.needs", "needs"),
        ("workflows: {w: {inputs: {n: {type: integer, default: x}}, steps: {a: {run: x}}}}",
         "w", "inputs.n", "not of type integer"),
        ("workflows: {w: {inputs: {n: {type: decimal}}, steps: {a: {run: x}}}}", "w",
         "inputs.n.type", "Input should be"),
        ("workflows: {w: {name: x, steps: {a: {run: x}}}}", "w", "name", "unknown key"),
        ("workflows: {w: {steps: {}}}", "w", "steps", "empty"),
    ],
)  # fmt: skip
def test_rejects_bad_definitions_naming_file_workflow_and_field(text, workflow, field, fragment):
    with pytest.raises(WorkflowFileError) as err:
        load_text(text, "bad.yaml")
    exc = err.value
    assert (exc.file, exc.workflow, exc.field) == ("bad.yaml", workflow, field)
    assert fragment in exc.message
    assert exc.message.startswith(f"bad.yaml: workflow '{workflow}', field '{field}': ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("workflows: [", "not valid YAML"),
        ("- 1\n- 2", "mapping"),
        ("jobs: {}", "unknown top-level key"),
        ("workflows: {}", "non-empty"),
        ("workflows: {w: {steps: {a: {run: x}}, loop: {produce: {call: 'a:b'}, "
         "evaluate: {call: 'a:b'}}}}", "exactly one of `loop:` or `steps:`"),
    ],
)  # fmt: skip
def test_rejects_bad_files(text, fragment):
    with pytest.raises(WorkflowFileError, match="bad.yaml") as err:
        load_text(text, "bad.yaml")
    assert fragment in err.value.message


def test_missing_file_and_duplicates(tmp_path):
    with pytest.raises(WorkflowFileError, match="cannot read"):
        load_files([str(tmp_path / "nope.yaml")])
    one = tmp_path / "one.yaml"
    one.write_text("workflows: {w: {steps: {a: {run: x}}}}")
    two = tmp_path / "two.yaml"
    two.write_text("workflows: {w: {steps: {a: {run: y}}}}")
    with pytest.raises(WorkflowFileError, match="also defined in") as err:
        load_files([str(one), str(two)])
    assert err.value.workflow == "w"
