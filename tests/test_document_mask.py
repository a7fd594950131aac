"""Packed rows with document boundaries (data.document_mask): attention never crosses a document in any kernel,
RoPE's positions restart at each document, the loss skips the tokens that would predict across a boundary.

A packed row's per-document logits equal each document run alone, for the blocked CPU kernel and XLA's (values and
the blocked kernel's gradients), TPU splash through Pallas' interpreter, and cuDNN's through an ahead-of-time
compile for an H100 (the CUDA compiler of `make aot`; skipped without it, failed under `make test`).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain import attention, compile as aot, losses, model, sharding, train
from jaxtrain import config as cfg_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ((0, 9), (9, 30), (30, 37))  # three documents of a 40-token row, then 3 tokens of padding


def packed(T=40, B=2, docs=DOCS):
  """int32 [B, T] segment ids: row 0 packs `docs` (1, 2, 3, then 0 padding), row 1 is one document."""
  seg = np.zeros((B, T), np.int32)
  for i, (s, e) in enumerate(docs):
    seg[0, s:e] = i + 1
  seg[1:] = 1
  return jnp.asarray(seg)


def small_model(**kw):
  m = cfg_lib.base().model
  m.update(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=256,
           qk_norm=True, **kw)
  return m


def logits_fn(m):
  graphdef = model.abstract(m)[0]
  return jax.jit(lambda p, t, s: nnx.merge(graphdef, p)(t, segment_ids_BT=s))


def test_segment_positions_restart_at_each_document():
  pos = np.asarray(attention.segment_positions(packed()))
  np.testing.assert_array_equal(pos[0], np.concatenate([np.arange(9), np.arange(21), np.arange(7), np.arange(3)]))
  np.testing.assert_array_equal(pos[1], np.arange(40))
  # RoPE at those positions is each document's own RoPE from 0.
  x = jax.random.normal(jax.random.key(0), (1, 40, 2, 8))
  rotated = model.rope(x, 10_000.0, jnp.asarray(pos[:1]))
  for s, e in DOCS:
    np.testing.assert_allclose(rotated[:, s:e], model.rope(x[:, s:e], 10_000.0), atol=1e-6)


@pytest.mark.parametrize("kind", ["blocked", "xla"])
def test_packed_row_logits_equal_each_document_alone(kind):
  m = small_model(attention=kind)
  params = model.init(m, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 64)
  seg = packed()
  f = logits_fn(m)
  out = f(params, tokens, seg)
  for s, e in DOCS:
    alone = f(params, tokens[:1, s:e], jnp.ones((1, e - s), jnp.int32))
    np.testing.assert_allclose(out[:1, s:e], alone, rtol=1e-5, atol=1e-5)
  # Without the mask the documents see each other (the test can fail), and one whole row is the causal model.
  leaky = jax.jit(lambda p, t: nnx.merge(model.abstract(m)[0], p)(t))(params, tokens)
  assert not np.allclose(leaky[:1, 9:30], out[:1, 9:30], atol=1e-3)
  np.testing.assert_allclose(out[1:], leaky[1:], rtol=1e-5, atol=1e-5)


def _qkv(B=2, T=40, H=4, G=2, K=8):
  return [jax.random.normal(jax.random.key(i), (B, T, n, K)) for i, n in enumerate((H, G, G))]


def test_blocked_kernel_with_segments_gradients_equal_each_document_alone():
  """The custom VJP (probabilities recomputed from the saved log-sum-exp) masks documents as the forward does."""
  q, k, v = _qkv(T=128)  # 128 rows: the kernel's 2 query blocks, the second document across their boundary
  seg = packed(128, docs=((0, 50), (50, 110), (110, 128)))
  ct = jax.random.normal(jax.random.key(9), q.shape)

  @jax.jit
  def grads(q, k, v, ct, s, kind="blocked"):
    f = lambda q, k, v: jnp.sum(attention.causal(q, k, v, kind, s)[0] * ct)
    return jax.grad(f, (0, 1, 2))(q, k, v), attention.causal(q, k, v, kind, s)[1]

  (g, max_logit), (g_causal, max_causal) = grads(q, k, v, ct, seg), grads(q, k, v, ct, None)
  part = lambda x: x[:1, 50:110]
  alone, _ = grads(part(q), part(k), part(v), part(ct), None)
  for a, b in zip(g, alone):
    np.testing.assert_allclose(part(a), b, rtol=1e-5, atol=1e-5)
  # XLA's autodiff of the masked kernel agrees over the whole batch; the unmasked kernel does not
  ref = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention.causal(q, k, v, "xla", seg)[0] * ct), (0, 1, 2)))(
      q, k, v)
  for a, b, c in zip(g, ref, g_causal):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, c, atol=1e-3)
  assert max_logit <= max_causal  # the max logit diagnostic sees only the pairs inside documents


@pytest.mark.slow  # Pallas' interpreter
def test_splash_with_segment_ids_in_pallas_interpret_mode():
  """TPU splash attention with its SegmentIds (values and gradients, Pallas' interpreter, its smallest tile)."""
  q, k, v = _qkv(B=2, T=128, H=2, G=1, K=16)
  seg = packed(128, docs=((0, 37), (37, 100), (100, 120)))
  ct = jax.random.normal(jax.random.key(9), q.shape)
  outs = {}
  for kind in ("splash", "xla"):
    out, vjp = jax.vjp(lambda *a: attention.causal(*a, kind, seg)[0], q, k, v)  # pylint: disable=cell-var-from-loop
    outs[kind] = (out, vjp(ct))
  np.testing.assert_allclose(outs["splash"][0], outs["xla"][0], rtol=1e-5, atol=1e-5)
  for g, r in zip(outs["splash"][1], outs["xla"][1]):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
  alone = attention.causal(q[:1, 37:100], k[:1, 37:100], v[:1, 37:100], "xla")[0]
  np.testing.assert_allclose(outs["splash"][0][:1, 37:100], alone, rtol=1e-5, atol=1e-5)


_CUDNN_CHILD = r'''
import json, re
from jaxtrain import compile as aot
aot.use_compiler("gpu")
import jax, jax.numpy as jnp
from jaxtrain import attention
device = aot.topology_devices(aot.parse_topology("h100:1"))[0]
B, T, H, G, K = 2, 256, 4, 2, 64
bf16 = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
sh = jax.sharding.SingleDeviceSharding(device)
def targets(*seg):
  loss = lambda q, k, v, *s: attention.causal(q, k, v, "cudnn", *s)[0].astype(jnp.float32).sum()
  text = jax.jit(jax.grad(loss, (0, 1, 2)), in_shardings=sh).lower(
      bf16(B, T, H, K), bf16(B, T, G, K), bf16(B, T, G, K), *seg).compile().as_text()
  return sorted(set(re.findall(r'custom_call_target="(__cudnn[^"]+)"', text)))
print("RESULT " + json.dumps({"causal": targets(), "packed": targets(jax.ShapeDtypeStruct((B, T), jnp.int32))}))
'''


@pytest.mark.slow  # an ahead-of-time compile for another machine
def test_cudnn_with_segment_ids_compiles_for_an_h100():
  """cuDNN's fused attention takes the documents as its bias (no GPU here: compiled ahead of time for an H100)."""
  env = aot.child_env("gpu")
  run = subprocess.run([sys.executable, "-c", _CUDNN_CHILD], capture_output=True, text=True, env=env, timeout=600,
                       cwd=REPO)
  if run.returncode != 0 and "needs jax-cuda12-plugin" in run.stderr:
    (pytest.fail if "JAXTRAIN_GPU_AOT" in os.environ else pytest.skip)(run.stderr.strip().splitlines()[-1])
  if run.returncode != 0 and "cuDNN not found" in run.stderr:  # `make aot` installs it; a bare plugin has none
    (pytest.fail if "JAXTRAIN_GPU_AOT" in os.environ else pytest.skip)(
        "cuDNN attention compiles only with nvidia-cudnn-cu12 beside the CUDA plugin (`make aot` installs both)")
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))[7:])
  # Forward and backward fused kernels; the documents reach them as the bias, the causal model has none.
  assert out["causal"] == ["__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"], out
  assert out["packed"] == ["__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"], out


def test_cudnn_path_masks_as_xla_does():
  """What the cudnn kernel is given is what XLA's kernel computes with (run here by XLA: no GPU)."""
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
  seg = packed()
  mask = attention.same_segment(seg, seg)[:, None]
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla")
  np.testing.assert_array_equal(attention.causal(q, k, v, "xla", seg)[0], ref)
  alone = attention.causal(q[:1, 9:30], k[:1, 9:30], v[:1, 9:30], "xla")[0]
  np.testing.assert_allclose(np.asarray(ref[:1, 9:30], np.float32), np.asarray(alone, np.float32), atol=2e-2)


def test_weighted_cross_entropy_skips_tokens_of_weight_zero():
  logits = jax.random.normal(jax.random.key(0), (2, 6, 5))
  targets = jax.random.randint(jax.random.key(1), (2, 6), 0, 5)
  w = jnp.asarray([[1, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], jnp.float32)
  loss, aux = losses.cross_entropy(logits, targets, weights_BT=w, z_loss=1e-2)
  keep = np.asarray(w, bool)
  ce = np.asarray(losses.softmax_cross_entropy(logits, targets))
  log_z = np.asarray(jax.nn.logsumexp(logits, -1))
  np.testing.assert_allclose(aux["ce"], ce[keep].mean(), rtol=1e-6)
  np.testing.assert_allclose(aux["ce_sum"], ce[keep].sum(), rtol=1e-6)
  assert aux["tokens"] == 5
  np.testing.assert_allclose(aux["accuracy"], (np.argmax(logits, -1) == targets)[keep].mean(), rtol=1e-6)
  np.testing.assert_allclose(aux["log_z"], log_z[keep].mean(), rtol=1e-6)
  np.testing.assert_allclose(loss, ce[keep].mean() + 1e-2 * (log_z[keep] ** 2).mean(), rtol=1e-6)
  # a divisor for microbatches; nothing to learn is a loss of 0, not NaN
  np.testing.assert_allclose(losses.cross_entropy(logits, targets, weights_BT=w, weight_sum=10.0)[1]["ce"],
                             ce[keep].sum() / 10, rtol=1e-6)
  assert losses.cross_entropy(logits, targets, weights_BT=0 * w)[0] == 0


def _packed_batch(c, seed=0):
  """A batch of packed rows as the pipeline gives them: documents split at random, the last one padded."""
  rng = np.random.default_rng(seed)
  B, T, V = c.train.global_batch, c.data.seq_len, c.model.vocab_size
  row = rng.integers(1, V, (B, T + 1)).astype(np.int32)
  seg = np.zeros((B, T + 1), np.int32)
  for b in range(B):
    cuts = np.sort(rng.choice(np.arange(2, T - 4), 2, replace=False))
    seg[b, :cuts[0]], seg[b, cuts[0]:cuts[1]], seg[b, cuts[1]:T - 2 * (b % 2)] = 1, 2, 3
  weights = ((seg[:, :-1] == seg[:, 1:]) & (seg[:, 1:] > 0)).astype(np.float32)
  return {"inputs": row[:, :-1], "targets": row[:, 1:], "segment_ids": seg[:, :-1], "weights": weights}


def _train(c, batch, steps=2):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  prog = train.build(c, mesh)
  state = prog.init(jax.random.key(0))
  rows = []
  for _ in range(steps):
    state, metrics = prog.train_step(state, sharding.host_to_global(batch, mesh))
    rows.append(jax.device_get(metrics))
  return rows, prog, state, mesh


def test_train_and_eval_steps_with_document_mask(tiny):
  c = tiny(data__document_mask=True, train__steps=2, model__max_seq_len=32)
  batch = _packed_batch(c)
  rows, prog, state, mesh = _train(c, batch)
  # The first step's loss is each document's own, over the tokens whose target is in the same document: each
  # document alone at the start of a row (causal: what follows it is not seen), one batched forward pass.
  m, params = c.model, prog.init(jax.random.key(0))["params"]
  B, T = batch["inputs"].shape
  alone = {k: np.zeros((3 * B, T), batch[k].dtype) for k in ("inputs", "targets", "weights")}
  for b in range(B):
    for d in (1, 2, 3):
      idx = np.flatnonzero(batch["segment_ids"][b] == d)
      for k in alone:
        alone[k][3 * b + d - 1, :len(idx)] = batch[k][b, idx]
  logits = jax.jit(lambda p, t: nnx.merge(model.abstract(m)[0], p)(t))(params, alone["inputs"])
  ce = losses.softmax_cross_entropy(logits, alone["targets"])
  ce_sum, n = float(jnp.sum(ce * alone["weights"])), alone["weights"].sum()
  np.testing.assert_allclose(rows[0]["ce"], ce_sum / n, rtol=2e-5)
  sums = prog.eval_step(state["params"], sharding.host_to_global(batch, mesh))
  assert float(sums[1]) == batch["weights"].sum()
  # Microbatches of different weight give the batch's weighted mean, as one pass does.
  c2 = c.copy_and_resolve_references()
  c2.train.microbatches = 2
  rows2, *_ = _train(c2, batch)
  for a, b in zip(rows, rows2):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], rtol=2e-5)


def test_off_the_step_is_unchanged(tiny):
  """Without segment ids and weights in the batch, data.document_mask changes nothing in the compiled step."""
  texts = []
  for on in (False, True):
    c = tiny(data__document_mask=on)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    prog = train.build(c, mesh)
    batch = {k: jax.ShapeDtypeStruct((8, 32), jnp.int32) for k in ("inputs", "targets")}
    texts.append(prog.train_step.jitted.lower(prog.abstract_state, batch).as_text())
  assert texts[0] == texts[1]
