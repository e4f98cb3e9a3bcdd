"""benchmarks/method_table.py: the method table of docs/benchmarks.md is one ``kdcore compare``
call (kdcore-plugin-compare), its table spliced between markers."""

from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_method_table_is_a_call_of_compare(tmp_path) -> None:
    """benchmarks/method_table.py builds one compare command and splices its table into the
    docs between the markers, keeping the text around them."""
    spec = importlib.util.spec_from_file_location("method_table", os.path.join(ROOT, "benchmarks", "method_table.py"))
    table_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table_script)
    args = table_script.argparse.Namespace(methods="vanilla,kd,at", seeds=3, epochs=5, labelled=2000,
                                           val_split=5000, train_limit=None, parallel=4, device="cuda",
                                           no_tune=False, teacher_cache=False, set=[], runs_dir="R")
    cmd = table_script.compare_args(args)
    assert cmd[:3] == ["compare", "--config", "teacher_student"]
    assert cmd[cmd.index("--tune") + 1] == "kd.temperature=1,2,4,8"
    assert "data.labelled=2000" in cmd and "data.val_split=5000" in cmd and cmd[cmd.index("--out") + 1] == "R"
    doc = tmp_path / "b.md"
    doc.write_text(f"intro\n{table_script.START}\nold\n{table_script.END}\nafter\n")
    table_script.splice("| new |", str(doc))
    assert doc.read_text() == f"intro\n{table_script.START}\n\n| new |\n{table_script.END}\nafter\n"
    assert {"vanilla", "kd", "at", "dkd"} <= set(table_script.every_method())
