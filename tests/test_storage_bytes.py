"""The README's bytes-per-parameter table is what the optimizer's arrays measure."""

from pathlib import Path

from fusedopt.tools.bench import memory

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_bytes_table_is_measured():
    text = README.read_text()
    assert memory.replace_table(text, memory.markdown(memory.measure())) == text, (
        "README.md's bytes table is stale: python -m fusedopt.tools.bench.memory --write README.md")


def test_the_remainder_saves_two_bytes_on_the_master():
    rows = {r["mode"]: r for r in memory.measure()}
    master, remainder = rows["bf16 params, fp32 master"], rows["bf16 params, int16 remainder"]
    assert master["state"] - remainder["state"] == 2
    assert rows["bf16 params, fp32 state"]["moved"] == 22  # REFERENCE: 12 read + 10 written
