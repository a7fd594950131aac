"""jaxtrain.plots: what each figure draws, read back from the axes (no images compared)."""

import json
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxtrain import plots  # noqa: E402


def _workdir(tmp_path, name="run_a"):
  """A run's metrics.jsonl: training lines with tokens and FLOPs, evaluation lines without, diagnostics lines, and
  steps 20-30 written twice (a resumed run: the second write counts)."""
  d = tmp_path / name
  d.mkdir()
  rows = []
  for s in (10, 20, 30, 20, 30, 40):
    rows.append({"step": s, "loss": 5.0 - s / 10 - (0.5 if len(rows) > 2 else 0.0), "tokens": 100 * s,
                 "total_flops": 1e6 * s})
    if s % 20 == 0:
      rows.append({"step": s, "eval_loss": 4.0 - s / 20})
    if s in (20, 40):
      rows.append({"step": s, "layers/grad_norm": [1.0 * s, 2.0 * s, 3.0 * s]})
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(d)


def _xy(line):
  return list(line.get_xdata()), list(line.get_ydata())


def test_curves_of_workdirs_against_tokens_keep_the_last_write_of_a_step_and_place_evals(tmp_path):
  a = _workdir(tmp_path)
  ax = plots.curves([a], "loss", x="tokens")
  assert _xy(ax.lines[0]) == ([1000, 2000, 3000, 4000], [4.0, 2.5, 1.5, 0.5])  # the resumed writes of 20, 30
  assert ax.lines[0].get_label() == "run_a" and ax.get_xlabel() == "tokens"
  ax = plots.curves({"A": a}, "eval_loss", x="total_flops")  # evaluation lines carry no FLOPs: from the step
  assert _xy(ax.lines[0]) == ([2e7, 4e7], [3.0, 2.0]) and ax.lines[0].get_label() == "A"
  plt.close("all")


def test_curves_take_dataframes_and_pairs_smooth_and_mark_a_diverged_end():
  df = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [4.0, 2.0, 6.0, 8.0]})
  ax = plots.curves({"df": df, "pair": ([0, 1, 2], [1.0, 2.0, 3.0])}, "loss", smooth=3, mark_end=("pair",),
                    label=lambda n: f"{n}!", colors={"pair": "red"})
  (x0, y0), (x1, y1), (xm, ym) = (_xy(l) for l in ax.lines)
  assert y0 == pytest.approx([3.0, 4.0, 16 / 3, 7.0])  # centred mean over 3, over 2 at the ends
  assert (x1, y1) == ([0, 1, 2], [1.5, 2.0, 2.5]) and ax.lines[1].get_color() == "red"
  assert (list(np.ravel(xm)), list(np.ravel(ym))) == ([2], [2.5])  # × at the pair's last point only
  assert [l.get_label() for l in ax.lines[:2]] == ["df!", "pair!"]
  plt.close("all")


def test_curves_name_the_metrics_a_run_has_when_the_key_is_missing(tmp_path):
  with pytest.raises(KeyError, match=r"run_a: no metric 'eval_los'; it has .*eval_loss"):
    plots.curves(_workdir(tmp_path), "eval_los")
  with pytest.raises(TypeError, match="needs a label"):
    plots.curves([([0], [1])])


def test_by_depth_and_heatmap_of_a_runs_per_layer_diagnostics(tmp_path):
  a = _workdir(tmp_path)
  ax = plots.by_depth({"A": a}, "layers/grad_norm", step="first")
  assert _xy(ax.lines[0]) == ([1, 2, 3], [20.0, 40.0, 60.0]) and ax.lines[0].get_label() == "A (step 20)"
  ax = plots.by_depth({"x": [3.0, 1.0], "y": [1.0, 2.0]})
  assert [_xy(l) for l in ax.lines] == [([1, 2], [3.0, 1.0]), ([1, 2], [1.0, 2.0])]
  with pytest.raises(ValueError, match=r"no 'layers/grad_norm' at step 30; it has steps \[20, 40\]"):
    plots.by_depth(a, "layers/grad_norm", step=30)
  ax = plots.heatmap(a, "layers/grad_norm")
  mesh = ax.collections[0]
  assert np.asarray(mesh.get_array()).reshape(3, 2).tolist() == [[20, 40], [40, 80], [60, 120]]  # layer × step
  ax = plots.heatmap(np.array([[1.0, 3.0, np.nan], [2.0, 4.0, 6.0]]), normalize="row", colorbar=False)
  got = np.ma.filled(ax.collections[0].get_array().reshape(2, 3).astype(float), np.nan)
  assert np.allclose(got, [[0, 1, np.nan], [0, 0.5, 1]], atol=1e-9, equal_nan=True)
  plt.close("all")


def test_sweep_marks_diverged_points_at_the_top_or_counts_them_at_the_cap():
  pts = [{"lr": lr, "final_eval_loss": loss, "status": st, "d": d}
         for d in (1, 2) for lr, loss, st in ((1e-3, 3.0 - d, "ok"), (2e-3, 2.5 - d, "ok"), (4e-3, None, "diverged"))]
  ax = plots.sweep(pts, "lr", by="d", best=True)
  lines = [(_xy(l), l.get_label()) for l in ax.lines]
  assert lines[0] == (([1e-3, 2e-3], [2.0, 1.5]), "d=1")
  assert lines[1][0] == ([4e-3], [2.0]) and ax.lines[1].get_marker() == "x"  # on the top edge: the highest loss
  assert lines[2][0] == ([2e-3], [1.5]) and ax.lines[2].get_marker() == "*"  # at d=1's best
  assert lines[3] == (([1e-3, 2e-3], [1.0, 0.5]), "d=2") and len(lines) == 6
  assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2  # a ×2 grid
  plt.close("all")
  ax = plots.sweep([p for p in pts if p["d"] == 1], "lr", cap=1.8, failed_color="k", label="capped")
  assert _xy(ax.lines[0]) == ([1e-3, 2e-3, 4e-3], [1.8, 1.5, 1.8])  # capped at ℓ0 and the diverged point joined
  assert _xy(ax.lines[1]) == ([4e-3], [1.8]) and ax.lines[1].get_color() == "k"
  plt.close("all")


def test_lr_transfer_and_best_vs_width_draw_each_rule_and_width():
  pts = [{"d_model": d, "lr": lr, "applied": lr * 32 / d, "final_eval_loss": 3.0 + abs(lr - 0.002) * 100,
          "status": "ok"} for d in (32, 64) for lr in (0.001, 0.002, 0.004)]
  axes = plots.lr_transfer({"SP": {"points": pts, "xlabel": "η"}}, (32, 64), plt.subplots(2, 1, squeeze=False)[1])
  top, bottom = axes[0][0], axes[1][0]
  assert top.get_title() == "SP: loss vs transferred η" and bottom.get_title() == "SP: loss vs applied hidden η"
  assert [l.get_label() for l in top.lines if not l.get_label().startswith("_")] == ["d = 32", "d = 64"]
  assert _xy(bottom.lines[2])[0] == [0.0005, 0.001, 0.002]  # d = 64 in applied η: half the given η
  assert "d_base = 32" in top.figure.get_suptitle()
  ax = plots.best_vs_width({"μS": {"widths": [32, 64, 128], "best": [0.1, 0.08, 0.05], "fit": [0.1, 0.07, 0.05],
                                   "exponent": 0.5, "marker": "o"}})
  grid, fit, rule = ax.lines
  assert _xy(grid) == ([32, 64, 128], [0.1, 0.08, 0.05]) and fit.get_linestyle() == ":"
  assert _xy(rule)[1] == pytest.approx([0.1, 0.1 / 2 ** 0.5, 0.05])  # the rule from the first width: d^-0.5
  assert ax.xaxis.get_transform().base == 2
  plt.close("all")


def test_fp8_stats_and_health_over_training():
  rows = [{"step": 1, "loss": 5.0}]
  for step, u in ((10, 0.1), (20, 0.3)):
    rows.append({"step": step, **{f"layers/fp8/{l}/{t}_{stat}": [u * (i + 1), u * (i + 1)]
                                  for i, l in enumerate(("attn.wq", "mlp.down")) for t in "xwg"
                                  for stat in ("underflow", "saturation", "rms")}})
  assert plots.fp8_stats(rows[:1], ("attn.wq",)) is None
  f = plots.fp8_stats(rows, ("attn.wq", "mlp.down", "absent"))
  assert f["steps"] == [10, 20] and f["g_underflow"] == pytest.approx([0.15, 0.45])  # mean over linears and layers
  assert f["x_saturation_max"] == pytest.approx([0.2, 0.6]) and f["w_rms_last"] == pytest.approx(
      {"attn.wq": 0.3, "mlp.down": 0.6})
  axes = plots.fp8_health({"fp8": {"loss": ([1, 2, 3], [5.0, 4.0, 3.0]), "health": f, "caption": "fp8 run"},
                           "bf16": {"loss": ([1, 2, 3], [5.0, 4.5, 4.0]), "health": None, "ref": True}}, smooth=1)
  assert [l.get_label() for l in axes[0].lines] == ["fp8 run", "bf16"] and axes[0].lines[1].get_linestyle() == ":"
  assert [l.get_label() for l in axes[1].lines] == ["fp8: g (E5M2)", "x (E4M3)", "w (E4M3)"]
  assert _xy(axes[1].lines[0]) == ([10, 20], pytest.approx([15.0, 45.0]))  # percent
  assert len(axes[2].lines) == 3 and axes[1].get_yscale() == "symlog"
  assert {l.get_color() for l in axes[1].lines} == {axes[0].lines[0].get_color()}  # the run's colour
  plt.close("all")


def test_save_writes_and_closes(tmp_path):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [0, 1])
  path = plots.save(fig, str(tmp_path / "f.png"))
  assert open(path, "rb").read(4) == b"\x89PNG" and not plt.fignum_exists(fig.number)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def test_importing_jaxtrain_and_plots_does_not_import_matplotlib():
  code = "import sys, jaxtrain, jaxtrain.plots; print('matplotlib' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
