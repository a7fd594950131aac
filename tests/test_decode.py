"""Generation with a KV cache (jaxtrain/decode.py, sample.generate's default method) against the windowed sampler:
the same tokens for every norm placement, grouped-query attention and μS, across prompt buckets and past
model.max_seq_len; the prefill's logits are the forward pass's; the cache lies on the mesh; one compile per shape;
a prompt longer than the cache is one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain import config as cfg_lib
from jaxtrain import decode, model, run, sample, sharding


def small(**kw):
  m = cfg_lib.base().model
  m.update(vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=96,
           init_std=0.3)  # logits far enough apart that greedy decoding does not repeat one token
  for key, value in kw.items():
    cfg_lib.set_field(m, key, repr(value) if not isinstance(value, str) else value)
  return m


def as_model(m, seed=1):
  """A `run.Model` of fresh parameters (sample.generate takes anything with config, graphdef, params)."""
  c = cfg_lib.base()
  c.model = m
  return run.Model(c, model.abstract(m)[0], model.init(m, jax.random.key(seed)), step=0)


def prompts(B=2, T=20, V=64, seed=0):
  return np.random.default_rng(seed).integers(0, V, (B, T)).astype(np.int32)


VARIANTS = {  # the norm placements (Mix-LN: a Post-LN layer, then Pre-LN ones: two scans), GQA, MQA, μS
    "pre": {}, "post": {"norm.placement": "post"}, "mix": {"norm.placement": "mix", "norm.mix_post_layers": 1},
    "peri": {"norm.placement": "peri"}, "lns": {"norm.placement": "lns"},
    "mus_res_post": {"parametrization": "mus", "norm.placement": "res_post", "tie_embeddings": False},
    "mqa_qk_norm_unrolled": {"num_kv_heads": 1, "qk_norm": True, "scan_layers": False},
}


FAST = ("pre", "mix")  # the others in `make test` only: ~10 s of compiling each


@pytest.mark.parametrize("variant", [v if v in FAST else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def test_greedy_equals_the_windowed_sampler(variant):
  mdl = as_model(small(**VARIANTS[variant]))
  p = prompts()
  cached = sample.generate(mdl, p, 24, temperature=0.0)
  window = sample.generate(mdl, p, 24, temperature=0.0, method="window")
  np.testing.assert_array_equal(cached, window)
  assert len(set(cached[0].tolist())) > 1  # not a degenerate repetition


def test_prompts_across_buckets_and_past_max_seq_len():
  """Prompts on both sides of the 64-token prefill bucket; sampling too (the same draws); runs past
  model.max_seq_len (96), where the cache fills and the window takes over, sliding."""
  mdl = as_model(small())
  for T in (63, 65):
    p = prompts(T=T, seed=T)
    np.testing.assert_array_equal(sample.generate(mdl, p, 20, temperature=0.0),
                                  sample.generate(mdl, p, 20, temperature=0.0, method="window"))
  p = prompts(T=80)
  kw = dict(temperature=1.0, top_k=20, seed=3)
  a = sample.generate(mdl, p, 40, **kw)
  np.testing.assert_array_equal(a, sample.generate(mdl, p, 40, method="window", **kw))
  assert (a != sample.generate(mdl, p, 40, **(kw | {"seed": 4}))).any()
  # a prompt the cache cannot hold: one line (the window keeps its last tokens)
  with pytest.raises(ValueError, match="more than the KV cache's 96") as e:
    sample.generate(mdl, prompts(T=97), 4)
  assert "\n" not in str(e.value)
  assert sample.generate(mdl, prompts(T=97), 4, method="window").shape == (2, 4)


def test_prefill_and_steps_are_the_forward_pass():
  """The cache's hidden states equal the full forward pass's at every position: prefill a padded prompt, then
  write one token at a time over the stale entries of the prompt's padding."""
  m = small(num_layers=2)
  mdl = as_model(m)
  module = nnx.merge(mdl.graphdef, mdl.params)
  tokens = jnp.asarray(prompts(T=16))
  full = jax.jit(module.hidden)(tokens)

  @jax.jit
  def by_cache(tokens):
    cache = decode.init_cache(m, 2, 32)
    padded = jnp.zeros((2, 16), jnp.int32).at[:, :12].set(tokens[:, :12])
    x, cache = decode.extend(module, padded, cache, 0)
    xs = [x[:, :12]]
    for n in range(12, 16):
      x, cache = decode.extend(module, tokens[:, n:n + 1], cache, n)
      xs.append(x)
    return jnp.concatenate(xs, axis=1), cache

  x, cache = by_cache(tokens)
  np.testing.assert_allclose(x, full[:, :16], rtol=1e-5, atol=1e-5)
  assert cache["k"].shape == decode.cache_shape(m, 2, 32) == (2, 2, 32, 2, 8)
  assert jnp.all(cache["k"][:, :, :16] != 0) and not jnp.any(cache["k"][:, :, 16:])  # written, never written


def test_one_compile_per_shape():
  mdl = as_model(small(num_layers=1))
  sample._decode_cached.clear_cache()  # pylint: disable=protected-access
  for n in (5, 9):  # one bucket of new tokens (256), of cache (64) and of prompt (64)
    sample.generate(mdl, prompts(T=10), n, temperature=0.0)
  assert sample._decode_cached._cache_size() == 1  # pylint: disable=protected-access


def test_decoding_on_a_mesh_shards_the_cache_and_gives_the_same_tokens():
  m = small(num_layers=1)
  mdl = as_model(m)
  p = prompts(B=4, T=12)
  one = sample.generate(mdl, p, 10, temperature=0.0)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  _, _, axes = model.abstract(m)
  params = jax.device_put(mdl.params, sharding.shardings(mesh, axes))
  with jax.set_mesh(mesh):
    sharded = run.Model(mdl.config, mdl.graphdef, params, 0)
    np.testing.assert_array_equal(sample.generate(sharded, p, 10, temperature=0.0), one)
    module = nnx.merge(mdl.graphdef, params)
    cache = jax.jit(lambda t: decode.extend(module, t, decode.init_cache(m, 4, 16), 0)[1])(jnp.asarray(p))
  assert cache["k"].addressable_shards[0].data.shape == (1, 2, 16, 1, 8)  # rows over data, kv heads over tensor
