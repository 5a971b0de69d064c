"""experiments.crossover: measures sequential vs DEER per cell, prints the table, draws the plot,
and writes the crossover table `jrnn.Auto` reads (a benchmark: nothing here asserts a timing)."""

import ast
import json

import jax
import pytest

import jrnn
from experiments import crossover


def test_crossovers_are_the_smallest_t_from_which_every_larger_t_won():
    row = lambda cell, T, s, fell=False: {"cell": cell, "structure": jrnn.parallel.structure(jrnn.cells.get(cell)),
                                          "B": 1, "H": 8, "T": T, "speedup": s, "fell_back": fell}
    rows = [row("paragru", 64, 0.5), row("paragru", 256, 1.2), row("paragru", 1024, 0.9), row("paragru", 4096, 2.0),
            row("paralstm", 64, 1.5), row("paralstm", 256, 1.5, fell=True), row("paralstm", 1024, 3.0),
            row("mingru", 64, 9.0), row("gru", 64, 0.1)]
    table = crossover.crossovers(rows, "cpu")["cpu"]
    assert table["diagonal"] == [(1, 8, 4096)]          # 256 won, 1024 lost: from 4096 on; mingru not counted
    assert table["blocks"] == [(1, 8, 1024)]            # a fallback is not a win
    assert table["dense"] == [(1, 8, None)]


@pytest.mark.slow   # compiles DEER for two cells: the crossovers rule above is the default case
def test_a_run_prints_the_table_writes_results_plot_and_the_crossover_module(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(crossover, "QUICK", dict(lengths=(8, 16), hiddens=(4,), batches=(1,)))
    table_file = tmp_path / "crossovers.py"
    table_file.write_text(crossover.TABLE_FILE.read_text())
    monkeypatch.setattr(crossover, "TABLE_FILE", table_file)
    rows = crossover.main(["--quick", "--cells", "paragru", "gru", "--rounds", "1", "--write", "--quiet",
                           "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "| cell | T | H | B | sequential ms | DEER ms | speed-up |" in out and "plot:" in out
    assert {(r["cell"], r["T"]) for r in rows} == {(c, T) for c in ("paragru", "gru") for T in (8, 16)}
    assert all(r["iterations"] >= 1 and r["seq_s"] > 0 and r["par_s"] > 0 for r in rows)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (tmp_path / "run" / "speedup.png").stat().st_size > 0
    written = {}
    exec(compile(ast.parse(table_file.read_text()), str(table_file), "exec"), written)
    want = crossover.crossovers(rows, jax.default_backend())
    assert written["CROSSOVERS"] == want
    assert json.loads(json.dumps(want, default=list)) == json.loads(json.dumps(results["metrics"]["crossovers"]))
    assert "# python -m experiments.crossover --quick  (commit" in table_file.read_text()
