"""jaxtrain.report (issue 21): the studies' report library: tables, formatting, summary.json, mean and spread over
seeds, and verdicts that come out either way from the data."""

import json
import os
import time

import pytest

from jaxtrain import report


def test_tables_and_numbers():
  assert report.table(["run", "loss"], [["a|b", 1.5], ["c", "—"]]) == [
      "| run | loss |", "|---|---|", "| a\\|b | 1.5 |", "| c | — |"]
  assert report.claims([("G_stack wins", "+12.0%", "yes")]) == [
      "| the paper says | we measured | agrees? |", "|---|---|---|", "| G_stack wins | +12.0% | **yes** |"]
  assert report.num(None) == "—" and report.num(4.123456) == "4.1235" and report.num(3.0, "{:.0f} s") == "3 s"
  assert report.pct(0.123) == "+12.3%" and report.pct(-0.05) == "-5.0%" and report.pct(None) == "—"
  assert report.pct(0.000123, ".3g", zero="0") == "0.0123%" and report.pct(0.0, ".3g", zero="0") == "0"


def test_mean_and_spread_over_seeds():
  assert report.mean_spread([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
  assert report.mean_spread([4.5]) == (4.5, 0.0, 1) == report.mean_spread(4.5)
  assert report.mean_spread([None, 2.0, float("nan")]) == (2.0, 0.0, 1)
  assert report.mean_spread([]) == report.mean_spread(None) == (None, None, 0)
  # One seed: the plain value, exactly as a one-seed report always printed it.
  assert report.cell([4.12345]) == "4.1235" == report.cell(4.12345)
  assert report.cell([4.0, 4.02, 4.04]) == "4.0200 ± 0.0200 (n=3)"
  assert report.cell([0.1, 0.3], "{:.2f}") == "0.20 ± 0.14 (n=2)"
  assert report.cell([None]) == "—"


@pytest.mark.parametrize("measured, agrees", [(0.46, True), (0.54, True), (0.6, False), (0.3, False),
                                              ([0.48, 0.52, 0.50], True), ([0.7, 0.8], False)])
def test_verdict_within_a_band_either_way(measured, agrees):
  v = report.verdict(measured, 0.5, 0.05)
  assert v.agrees is agrees and str(v) == ("yes" if agrees else "no") and v.label == str(v)
  assert "vs 0.5 ± 0.05" in v.text


def test_verdict_labels_thresholds_and_no_data():
  assert report.verdict(0.1, 0.0, 0.2, yes="agrees", no="disagrees").label == "agrees"
  assert report.verdict(0.3, 0.0, 0.2, yes="agrees", no="disagrees").label == "disagrees"
  assert report.verdict([0.1, 0.3], 0.0, 0.1).text == "0.2 ± 0.14 (n=2) vs 0 ± 0.1"
  assert report.at_least(0.2, 0.0) == ("yes", True, "0.2 ≥ 0")
  assert report.at_least([-0.1, -0.3], 0.0) == ("no", False, "-0.2 ± 0.14 (n=2) < 0")
  assert report.at_most(0.01, 0.02, yes="close").agrees and not report.at_most(0.03, 0.02).agrees
  for fn in (lambda m: report.verdict(m, 0, 1), lambda m: report.at_least(m, 0), lambda m: report.at_most(m, 0)):
    assert fn(None) == ("not measured", None, "not measured") and fn([]).agrees is None


def test_summary_json_round_trip_and_report_only_keeps_the_training_meta(tmp_path):
  path = str(tmp_path / "summary.json")
  report.write_summary(path, {"date": "d0", "wall_min": 30.0, "parallel": 2, "load": "busy", "machine": "m0"},
                       {"x": [1, 2]})
  assert report.read_summary(path) == ({"date": "d0", "wall_min": 30.0, "parallel": 2, "load": "busy",
                                        "machine": "m0"}, {"x": [1, 2]})
  report.write_summary(path, {"date": "d1", "wall_min": 0.1, "parallel": 1, "load": "idle", "machine": "m1"},
                       {"x": [3]}, report_only=True)
  meta, m = report.read_summary(path)
  assert meta == {"date": "d0", "wall_min": 30.0, "parallel": 2, "load": "busy", "machine": "m1"} and m == {"x": [3]}
  fresh = str(tmp_path / "fresh.json")
  report.write_summary(fresh, {"load": "idle"}, {}, report_only=True)
  assert json.load(open(fresh))["meta"]["load"] == "not recorded (report rebuilt with --report-only)"


def test_machine_load_meta_and_span(tmp_path):
  assert " CPU (" in report.machine() and report.machine().endswith(" threads")
  assert "idle apart from the study" in report.load_state(0.0, 0.0)
  assert "**busy**" in report.load_state(1000.0, 0.0)
  m = report.meta(time.time() - 60, 0.0, 2, target="x")
  assert list(m) == ["date", "machine", "parallel", "load", "wall_min", "target"] and 0.9 < m["wall_min"] < 2
  assert report.span([str(tmp_path / "nothing")]) == {}
  a, b, old = tmp_path / "a", tmp_path / "b", tmp_path / "old"
  for d in (a, b, old):
    d.mkdir()
  (a / "result.json").write_text(json.dumps({"started": "2026-01-01 10:00:00", "finished": "2026-01-01 10:30:00",
                                             "wall_s": 1800}))
  (b / "result.json").write_text(json.dumps({"started": "2026-01-01 10:10:00", "finished": "2026-01-01 11:00:00",
                                             "wall_s": 600}))
  assert report.span([str(a), str(b)]) == {"start": "2026-01-01 10:00:00", "end": "2026-01-01 11:00:00",
                                           "minutes": 60.0, "runs": 2, "run_minutes": 40.0}
  # A run recorded before result.json had times: its log's first header and the file's time.
  start = time.mktime(time.strptime("2026-01-01 09:00:00", "%Y-%m-%d %H:%M:%S"))
  (old / "log.txt").write_text("=== sweep: 2026-01-01 09:00:00 on all devices: python -m jaxtrain\n")
  (old / "result.json").write_text(json.dumps({"wall_s": 60}))
  os.utime(old / "result.json", (start + 120, start + 120))
  s = report.span([str(old)])
  assert s["minutes"] == 2.0 and s["runs"] == 1 and s["run_minutes"] == 1.0


def test_tally_and_render_with_an_optional_block(tmp_path):
  assert report.tally([True, True]) == ("yes", True, "2 of 2")
  assert report.tally([True, False]).label == "partly" and report.tally([False, False]).label == "no"
  assert report.tally([]) == ("not measured", None, "0 of 0")
  t = tmp_path / "t.md"
  t.write_text("# {title} ({n:.1f})\n\n<!-- if extra -->\nExtra: {extra}.\n\n<!-- end extra -->\n{m[k]} {{literal}}\n")
  assert report.render(str(t), title="A", n=2.0, extra="", m={"k": 1}) == "# A (2.0)\n\n1 {literal}\n"
  out = str(tmp_path / "report.md")
  text = report.render(str(t), out, title="A", n=2.0, extra="yes", m={"k": 1})
  assert text == "# A (2.0)\n\nExtra: yes.\n\n1 {literal}\n" == open(out).read()
  assert report.rows([["a", 1], ["b", None]]) == ["| a | 1 |", "| b | None |"]


def test_curves_and_the_optimum_of_a_grid():
  assert report.last_per_step([{"step": 2, "v": 1}, {"step": 1, "v": 2}, {"step": 2, "v": 3}]) == [
      {"step": 1, "v": 2}, {"step": 2, "v": 3}]  # a resumed run's second write counts
  curve = [(0, 5.0, 0), (10, 3.0, 1), (20, 1.0, 2)]
  assert report.smooth(curve, 3) == [(0, 4.0, 0), (10, 3.0, 1), (20, 2.0, 2)]
  assert report.first_reach(curve, 2.0) == 15.0 and report.first_reach(curve, 0.5) is None
  assert report.first_reach(curve, 6.0) == 0 and report.at(curve, 5) == 4.0
  grid = [(0.004, 3.0, True), (0.001, 3.0, True), (0.002, 2.0, True), (0.008, None, False)]
  o = report.grid_optimum(grid)
  assert (o["x"], o["y"], o["edge"], o["fit"], o["n_ok"], o["n"]) == (0.002, 2.0, False, 0.002, 3, 4)
  o = report.grid_optimum([(1, 3.0, True), (2, 2.0, True), (4, 2.5, True)])
  assert o["fit"] == pytest.approx(2 * 2 ** (0.5 * 0.5 / 1.5))  # the parabola's vertex in log2(x)
  assert report.grid_optimum([(1, 3.0, True), (2, 4.0, True)])["edge"]
  assert report.grid_optimum([(1, None, False)]) is None


def test_a_study_s_flags_and_its_summary_or_measurements(tmp_path, monkeypatch):
  parser = report.study_parser("doc", "demo", {"cpu": 0, "gpu": 0}, runs_flag="--runs")
  monkeypatch.chdir(tmp_path)
  args = report.study_args(parser, "demo", str(tmp_path / "here"), ["--report-only"])
  assert (args.out, args.runs_dir, args.report_only) == (str(tmp_path / "here" / "results"), "runs/demo_cpu", True)
  assert args.parallel >= 1 and os.path.isdir(args.out)
  args = report.study_args(parser, "demo", "x", ["--size", "gpu", "--runs", "r", "--parallel", "3"])
  assert (args.out, args.runs_dir, args.parallel) == ("runs/demo_gpu/results", "r", 3)
  # --report-only with the runs gone: summary.json as written; an older summary's span comes back in today's form.
  args = report.study_args(parser, "demo", str(tmp_path / "here"), ["--report-only"])
  path = os.path.join(args.out, "summary.json")
  json.dump({"meta": {"date": "d"}, "measurements": {"x": 1, "span": {"start": "08:39", "points": 43,
                                                                      "point_minutes": 118.0}}}, open(path, "w"))
  meta, m = report.load_or_measure(args, lambda: pytest.fail("measured"))
  assert meta == {"date": "d", "span": {"start": "08:39", "runs": 43, "run_minutes": 118.0}} and m["x"] == 1
  os.makedirs(args.runs_dir)  # the runs are there: measured again, the training's meta kept
  meta, m = report.load_or_measure(args, lambda: ({"date": "new", "load": "idle"}, {"x": 2}))
  assert report.read_summary(path) == ({"date": "d", "load": "idle"}, {"x": 2}) == (meta, m)


def test_measurements_over_seeds_aggregate_per_seed_values():
  # One seed keeps the one-seed schema (committed summaries read back unchanged); several are kept per seed.
  one = {"runs": {"a": {"loss": 4.0}}}
  assert report.join_seeds([None], [one]) is one and report.per_seed(one) == [one]
  two = [{"runs": {"a": {"loss": 4.0, "curve": [(0, 5.0), (1, 3.0)]}, "b": {"loss": None}}},
         {"runs": {"a": {"loss": 4.2, "curve": [(0, 7.0), (1, 5.0)]}, "c": {"loss": 1.0}}}]
  m = report.join_seeds([0, 1], two)
  assert m == {"seeds": [0, 1], "by_seed": two} and report.per_seed(json.loads(json.dumps(m)))[1]["runs"]["c"]
  assert report.pooled(two, "runs", "a", "loss") == [4.0, 4.2]  # missing or None: left out
  assert report.pooled(two, "runs", "b", "loss") == [] and report.pooled(two, "runs", "c", lambda r: r["loss"] * 2) == [2]
  by_run = report.over_seeds(two, "runs")
  assert list(by_run) == ["a", "b", "c"] and len(by_run["a"]) == 2 and len(by_run["c"]) == 1
  assert report.cell(report.pooled(by_run["a"], "loss"), "{:.2f}") == "4.10 ± 0.14 (n=2)"
  assert report.mean_curves(two, "runs", keys=("curve",))["a"]["curve"] == [(0, 6.0), (1, 4.0)]
  assert report.mean_curve([[(0, 1.0)], [(5, 3.0)]]) == [(0, 1.0)]  # other xs: the first curve
  # A grid's points over seeds: one per point, the mean loss, ok only where every seed is.
  rows = [{"lr": 1, "status": "ok", "loss": 2.0}, {"lr": 2, "status": "ok", "loss": 3.0},
          {"lr": 1, "status": "ok", "loss": 4.0}, {"lr": 2, "status": "diverged", "loss": None}]
  assert report.mean_rows(rows, lambda r: r["lr"], ("loss",)) == [
      {"lr": 1, "status": "ok", "loss": 3.0, "n": 2}, {"lr": 2, "status": "diverged", "loss": 3.0, "n": 2}]
  assert report.statuses(["ok", "ok"]) == "ok" and report.statuses(["ok", "failed", "ok"]) == "ok ×2, failed ×1"
  assert report.first_last([[0.1, 0.3], [0.3, 0.5]], "{:.1f}") == "0.2 ± 0.1 (n=2) → 0.4 ± 0.1 (n=2)"
  assert report.first_last([[0.1, 0.3]], "{:.1f}") == "0.1 → 0.3"


def test_cells_over_seeds_where_some_never_get_there():
  assert report.cell([0.1, 0.12], report.pct) == "+11.0% ± 1.4% (n=2)"  # a callable format; the sd has no sign
  assert report.cell([0.123], report.pct) == report.pct(0.123) == "+12.3%"
  assert report.reached([0.1, None], "{:.2f}") == "0.10; 1 of 2 seeds not reached"
  assert report.reached([None, None]) == "not reached" and report.reached([]) == "—"
  assert report.reached([1.0, 3.0], "{:.0f}") == "2 ± 1 (n=2)"
  ref = [(0, 5.0), (10, 3.0), (20, 2.0)]
  fast = report.speedup(ref, [(0, 5.0), (5, 3.0), (20, 1.5)], 3.0)
  assert fast == {"flops": 5.0, "speedup": 1.0, "loss_at_end": 1.5, "gap_at_end": -0.5}
  slow = report.speedup(ref, [(0, 5.0), (20, 3.5)], 3.0)
  assert slow["speedup"] is None and slow["gap_at_end"] == 1.5
  assert report.speedup_cell([fast]) == "+100.0%" and report.speedup_cell([fast], 20.0) == "**+100.0%** (at 0.250 C)"
  assert report.speedup_cell([slow]) == "< 0 (does not reach it; +1.5000 at the budget)"
  assert report.speedup_cell([fast, slow], 20.0) == "**+100.0%** (at 0.250 C); 1 of 2 seeds < 0 (not reached)"
  assert report.speedup_cell([]) == "not measured"
  f = {"x_underflow": [0.1, 0.2], "w_underflow": [0.0, 0.0], "g_underflow": [0.5, 0.25], "g_underflow_max": [0.9, 1],
       "x_saturation_max": [0, 0], "w_saturation_max": [0, 0], "g_saturation_max": [0, 0.5],
       "x_underflow_last": {"mlp.down": 0.2}, "g_underflow_last": {"mlp.down": 0.25, "attn.wq": 0.0},
       "g_rms_last": {"mlp.down": 1.5, "attn.wq": 0.0}}
  assert report.fp8_cells([f], "{:.2f}".format) == ["0.10 → 0.20", "0.00 → 0.00", "0.50 → 0.25 (1.00)",
                                                    "0.00 / 0.00 / 0.50"]
  assert report.fp8_cells([]) == ["—"] * 4
  assert report.fp8_per_linear([f, f], "{:.2f}".format) == (
      "activations x mlp.down 0.20 ± 0.00 (n=2); output gradients g mlp.down 0.25 ± 0.00 (n=2), attn.wq all zero (no "
      "gradient reaches it); gradient RMS (after ×S or ÷ scale) mlp.down 1.5 ± 0 (n=2), attn.wq 0 ± 0 (n=2)")


def test_render_chooses_a_sentence_or_a_section_and_a_study_loads_its_config(tmp_path):
  t = tmp_path / "t.md"
  t.write_text("A <!-- if one -->one seed<!-- else -->{n} seeds<!-- end one -->.\n<!-- if one -->\nx\n<!-- else -->\n"
               "y {n}\n<!-- end one -->\nend\n")
  assert report.render(str(t), one=True, n=1) == "A one seed.\nx\nend\n"
  assert report.render(str(t), one=False, n=3) == "A 3 seeds.\ny 3\nend\n"
  (tmp_path / "c.py").write_text("X = 3\n")
  assert report.load_module(str(tmp_path / "c.py"), "demo_config").X == 3
  parser = report.study_parser("doc", "demo", {"cpu": 0}, seeds=True)
  assert parser.parse_args([]).seeds == 1 and parser.parse_args(["--seeds", "3"]).seeds == 3
  assert not hasattr(report.study_parser("doc", "demo", {"cpu": 0}).parse_args([]), "seeds")


@pytest.mark.parametrize("a, b, label, agrees", [
    # Each outcome from synthetic seeds: a clearly lower, clearly higher, within the seeds' noise.
    ([2.00, 2.01, 1.99], [2.10, 2.12, 2.09], "lower", True),
    ([2.20, 2.22, 2.19], [2.10, 2.12, 2.09], "higher", False),
    ([2.00, 2.10, 1.95], [2.05, 2.02, 2.01], "within seed noise", False),
    # Paired: a shared per-seed offset (the data order) is removed, so a small steady gap counts...
    ([2.0, 2.5, 3.0], [2.01, 2.51, 3.012], "lower", True),
])
def test_compare_comes_out_each_way(a, b, label, agrees):
  v = report.compare(a, b, names=("Mix-LN", "Pre-LN"))
  assert (v.label, v.agrees) == (label, agrees)
  assert v.text.startswith("Mix-LN − Pre-LN = ") and "paired over 3 seeds" in v.text


def test_compare_unpaired_one_seed_and_no_data():
  # ...which unpaired (Welch) it does not: the seeds' spread swamps it.
  assert report.compare([2.0, 2.5, 3.0], [2.01, 2.51, 3.012], paired=False).label == "within seed noise"
  assert "Welch" in report.compare([2.0, 2.5, 3.0], [2.01, 2.51, 3.012], paired=False).text
  assert report.compare([1.0, 1.01, 0.99, 1.0], [2.0, 2.02, 1.99], paired=True).label == "lower"  # lengths differ: Welch
  d = report.difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
  assert d.mean == pytest.approx(2.0) and d.hi - d.mean == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
  undecided = "too few seeds: undecided"
  assert report.compare([1.0], [2.0]) == (undecided, False, "a − b = -1.0000 (1 seed: no interval)")
  assert report.compare([], [2.0]).agrees is None and report.compare(None, None).label == "not measured"
  assert report.compare([1.0, None, 1.1], [2.0, 2.1, None]).label == undecided  # one complete pair
  # Two seeds give an interval, but a verdict rests on three (min_seeds): undecided, unless asked for fewer.
  two = report.compare([1.0, 1.01], [2.0, 2.02])
  assert two.label == undecided and "over 2 seeds, fewer than the 3 a verdict needs" in two.text
  assert report.compare([1.0, 1.01], [2.0, 2.02], min_seeds=2).label == "lower"
  assert report.t975(2) == 4.303 and report.t975(100) == 1.96 and report.t975(0.5) == 12.706


# ---------------------------------------------------------------- the studies' verdicts and their reports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study(name, module="run"):
  """A study's run.py (or measure.py) as a module, its folder first on sys.path (its siblings import by name)."""
  import sys  # pylint: disable=import-outside-toplevel
  here = os.path.join(REPO, "experiments", name)
  if here not in sys.path:
    sys.path.insert(0, here)
  for sibling in ("measure", "plots"):  # the studies' siblings share names: drop another study's
    mod = sys.modules.get(sibling)
    if mod is not None and os.path.dirname(getattr(mod, "__file__", "")) != here:
      del sys.modules[sibling]
  return report.load_module(os.path.join(here, f"{module}.py"), f"study_{name}_{module}")


def _norm_runs(losses):
  """Synthetic norm-placement measurements: {placement: final loss per seed}, the rest alike."""
  return [{"placement": p, "seed": s, "status": "finished", "step": 400, "seconds": 60.0, "final_loss": x,
           "final_ppl": 2.718281828 ** x, "skip_drop": [0.1] * 3, "angular_next": [0.1] * 3, "skip_deep_mean": 0.1,
           "skip_first_mean": 0.1, "angular_deep_mean": 0.05, "angular_first_mean": 0.1 + 0.01 * s,
           "diagnostics": False} for p, xs in losses.items() for s, x in enumerate(xs)]


@pytest.mark.parametrize("mix, label", [([2.00, 2.01, 1.99], "agrees"), ([2.20, 2.22, 2.19], "no: the opposite"),
                                        ([2.00, 2.20, 2.05], "within seed noise")])
def test_norm_placement_verdicts_come_out_each_way(mix, label):
  run = _study("norm_placement")
  rows = run.claims(run.by_placement(_norm_runs({"pre": [2.10, 2.12, 2.09], "mix": mix})))
  (claim, _, verdict, evidence), = [r for r in rows if r[0].startswith("Mix-LN reaches")]
  assert verdict == label and "paired over 3 seeds" in evidence
  # Pre-LN's last third closer to the identity than its first, in every seed: a clear yes.
  assert [r[2] for r in rows if r[0].startswith("Pre-LN's deep layers change")] == ["agrees"]


def test_instability_verdicts_come_out_each_way():
  measure = _study("instability", "measure")
  run = _study("instability")

  def seed(sens_base, sens_qk, sens_muon):
    runs = {0.01: {"status": "ok", "final": 2.5, "l0": 5.5, "last_step": 160, "wall_s": 1.0, "attn": None,
                   "attn_tail": 1.0, "log_z_tail": 1.0, "apart": None, "unstable": False, "given_back": 0.0}}
    mk = lambda sens, peak: {"sens": sens, "sens_high": 0.0, "best": 2.5, "best_lr": 0.01, "attn_peak": peak,
                             "log_z_abs_tail": 1.0, "runs": runs}
    return {(128, "baseline"): mk(sens_base, 1e4), (128, "qk-norm"): mk(sens_qk, 50.0),
            (128, "muon"): mk(sens_muon, 1e3)}

  datas = {0: seed(0.40, 0.26, 0.50), 1: seed(0.41, 0.27, 0.30), 2: seed(0.39, 0.25, 0.45)}
  got = {c: o for c, _, o, _ in run.checks(datas, [128])}
  assert got["qk-norm lowers LR sensitivity (d=128, baseline → qk-norm)"] == "**agrees**"
  assert got["qk-norm keeps attention logits bounded (d=128: the largest max attention logit of any run, qk-norm "
             "against baseline, compared in log10)"] == "**agrees**"
  assert got["Muon against AdamW, LR sensitivity (d=128, no qk-norm): lower means a wider basin"] == (
      "**within seed noise**")
  datas = {0: seed(0.20, 0.26, 0.10), 1: seed(0.21, 0.27, 0.11), 2: seed(0.19, 0.25, 0.12)}
  got = {c: o for c, _, o, _ in run.checks(datas, [128])}
  assert got["qk-norm lowers LR sensitivity (d=128, baseline → qk-norm)"] == "**no: the opposite**"
  assert got["Muon against AdamW, LR sensitivity (d=128, no qk-norm): lower means a wider basin"] == (
      "**Muon less sensitive**")
  assert measure.setting_of({"model.qk_norm": False, "train.z_loss": 0.0, "optim.name": "muon"}) == "muon"
  assert measure.setting_of({"model.qk_norm": False, "train.z_loss": 0.0}) == "baseline"


def test_grokking_verdicts_count_seeds_and_come_out_each_way():
  measure = _study("grokking", "measure")
  s = lambda t95, best=1.0: {"steps": 1000, "test_95": t95, "test_best": best, "train_final": 1.0}
  assert measure.verdict("orthograd", [s(100), s(125), s(150)]).startswith("Agrees: 3 of 3 seeds. ")
  assert measure.verdict("orthograd", [s(100), s(None, 0.3), s(150)]).startswith("Partly: 2 of 3 seeds. ")
  assert measure.verdict("adamw_wd", [s(None, 0.2)] * 3).startswith("Differs: 0 of 3 seeds. ")
  assert "fewer than the 3 a verdict needs" in measure.verdict("orthograd", [s(100)])
  f = lambda half, best=0.001: {"steps": 8000, "sc_half": half, "sc_max": 0.9, "test_best": best}
  f32 = [f(1800), f(1900), f(1850)]
  assert measure.verdict("softmax_f64", [f(5600), f(5500), f(5700)], {"adamw_f32": f32}).startswith(
      "SC later in float64")
  assert measure.verdict("softmax_f64", [f(1800), f(1950), f(1700)], {"adamw_f32": f32}).startswith(
      "within seed noise")
  # A run that never passes 50% counts at its last step (past the budget): later.
  assert measure.verdict("softmax_f64", [f(None)] * 3, {"adamw_f32": f32}).startswith("SC later in float64")


@pytest.mark.parametrize("study", ["norm_placement", "norm_placement/results/small", "instability", "grokking"])
def test_a_study_s_report_regenerates_byte_identically_from_its_summary(study, tmp_path):
  """--report-only rebuilds the committed report.md from the committed summary.json alone (`study`: its name, or
  its name and the results directory of another size's committed report)."""
  import shutil  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  study, _, sub = study.partition("/")
  results = os.path.join(REPO, "experiments", study, sub or "results")
  shutil.copy(os.path.join(results, "summary.json"), tmp_path / "summary.json")
  subprocess.run([sys.executable, os.path.join(REPO, "experiments", study, "run.py"), "--report-only", "--out",
                  str(tmp_path)], check=True, capture_output=True, cwd=str(tmp_path))
  for name in ("report.md", "collapse.md"):
    if os.path.exists(os.path.join(results, name)):
      with open(os.path.join(results, name), encoding="utf-8") as a, open(tmp_path / name, encoding="utf-8") as b:
        assert b.read() == a.read(), name
  with open(tmp_path / "summary.json", encoding="utf-8") as a, open(os.path.join(results, "summary.json"),
                                                                    encoding="utf-8") as b:
    assert json.load(a) == json.load(b)  # a report-only rebuild keeps the training's meta
