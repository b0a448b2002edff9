"""The CUDA rules in kernels/ are generated from the Python rules (fusedopt/algorithms/), and
the committed files are what the rules give now; the translator refuses what the rule
language does not have, with the line and what to do."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from fusedopt.algorithms import adam as adam_family
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import codegen


def test_the_committed_kernels_are_what_the_rules_give():
    assert codegen.stale() == [], "run `python -m fusedopt.backends.cuda.codegen --write`"


def test_the_check_command_passes_on_the_committed_tree():
    run = subprocess.run([sys.executable, "-m", "fusedopt.backends.cuda.codegen", "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def _planted(tmp_path, old: str, new: str):
    """Adam's spec with its rule's source edited (``old`` -> ``new``), loaded from a file so
    the translator reads the edited source."""
    import inspect
    source = textwrap.dedent(inspect.getsource(adam_family.rule))
    assert old in source
    path = tmp_path / "planted_rule.py"
    path.write_text(source.replace(old, new))
    namespace = dict(vars(adam_family))
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    rule = namespace["rule"]
    rule.__module__ = adam_family.__name__
    return dataclasses.replace(adam_family.ADAM, rule=rule)


def test_a_planted_edit_in_a_rule_fails_the_check(tmp_path):
    spec = _planted(tmp_path, "v_used = vhat\n", "v_used = vhat + k.eps\n")
    assert codegen.stale(specs=[spec]) == ["adam.cu"]
    assert "v_used = vhat + k.eps;" in codegen.rule_source(spec)
    assert codegen.stale(specs=[adam_family.ADAM]) == []  # the unedited rule: no drift


def test_a_planted_edit_in_a_committed_file_fails_the_check(tmp_path):
    for name, text in codegen.generated().items():
        (tmp_path / name).write_text(text)
    assert codegen.stale(tmp_path) == []
    edited = (tmp_path / "lion.cu").read_text().replace("k.one_minus_b1", "k.one_minus_b2", 1)
    (tmp_path / "lion.cu").write_text(edited)
    assert codegen.stale(tmp_path) == ["lion.cu"]


def test_every_family_has_a_rule_struct_with_named_scalar_fields():
    for spec in REGISTRY.values():
        texts = [codegen.rule_source(spec)]
        if spec.reductions is not None:  # the reduction phase's terms read the same struct
            texts.append(codegen.reduce_source(spec))
        for text in texts:
            assert f"    C {', '.join(spec.row_names)};" in text
            assert "h[" not in text


@pytest.mark.parametrize("old, new, message", [
    ("v_used = v\n", "v_used = v * 0.5\n", "literal 0.5"),
    ("v_used = vhat\n", "v_used = k.nope\n", "k.nope is no scalar"),
    ("if f.amsgrad:", "if f.nope:", "f.nope is no flag"),
    ("v_used = vhat\n", "v_used = max(vhat, v)\n", "outside the rule language"),
    ("v_used = vhat\n", "v_used += vhat\n", "AugAssign is outside"),
    ("v_used = vhat\n", "v_used = power(vhat)\n", r"power\(\) takes 2 arguments"),
    ("v_used = vhat\n", "v_used = sqrt(vhat, v)\n", r"sqrt\(\) takes 1 argument,"),
])
def test_the_translator_refuses_what_the_language_has_not(tmp_path, old, new, message):
    spec = _planted(tmp_path, old, new)
    with pytest.raises(codegen.RuleError, match=message) as raised:
        codegen.rule_source(spec)
    assert "fusedopt/algorithms/adam.py, line" in str(raised.value)


def test_a_rule_whose_file_changed_since_import_is_refused(tmp_path):
    """inspect reads a rule's source from its file: when the file moved the function (edited
    after import), both backends refuse rather than compile other lines."""
    import inspect

    from fusedopt.algorithms.ruleast import function
    path = tmp_path / "moved_rule.py"
    source = textwrap.dedent(inspect.getsource(adam_family.rule))
    path.write_text(source)
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert function(namespace["rule"]).name == "rule"
    path.write_text("def scalars(hp, step, convention):\n    return {}\n\n\n" + source)
    import linecache
    linecache.checkcache(str(path))
    with pytest.raises(codegen.RuleError, match="changed since it was imported"):
        function(namespace["rule"])


def test_power_translates_to_cudas_pow_in_the_compute_type(tmp_path):
    """``power(x, y)`` (a value to a scalar's power, Ftrl's) becomes CUDA's ``pow`` of both
    arguments in the compute type (powf for float32, as Keras takes the power in the
    variable's dtype), its arguments translated as any expression."""
    spec = _planted(tmp_path, "v_used = vhat\n", "v_used = power(vhat + v, k.eps)\n")
    assert "v_used = pow(C(vhat + v), C(k.eps));" in codegen.rule_source(spec)
