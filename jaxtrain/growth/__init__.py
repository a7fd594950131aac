"""Model growth: a trained model's parameters -> a bigger model's, in depth and width, offline or mid-run.

    core.py     index maps and the transfer Ŵ = s·W[π] (fresh or 0 where π = -1) that every operator is
    depth.py    G_stack, G↑zero, G↑learn (LiGO), fresh layers on top (G↑random with an event's ramp_steps: MSG's
                mask; Du et al., NeurIPS 2024), Gesmundo & Maile's #6
    width.py    Gesmundo & Maile's #1-#5 (2023), Net2Net / bert2BERT neuron splitting, MSG's fresh new units and
                heads (`fresh_write`; an event's ramp_steps masks their inputs: `masked_params`)
    events.py   a run's growth events (config.growth): plan, phases, the train-state transform, FLOPs
    offline.py  `python -m jaxtrain.grow`: a run's checkpoint -> a bigger model's new workdir (imports the
                trainer, so it is not imported here)

Every operator is `(m, params, ...) -> (new_m, new_params)`, with an explicit PRNG key where new entries are
drawn (g_learn takes training batches instead), `params` the model's pytree (`model.init`, stacked blocks on a
leading `layers` axis). With `with_index_map=True` it also returns where each new entry came from (per leaf,
one int array per axis, new position -> old position or -1), which `grow_opt_state` moves the optimizer's
moments by. `apply(m, params, op, args, key)` calls any of them by name (OPERATORS).
"""

from jaxtrain.growth.core import AxisMap, compose_index_maps, layer_sources, regrid, repeats, without_copies
from jaxtrain.growth.depth import (IDENTITY_PLACEMENTS, cycle_map, g_learn, g_random, g_zero, insert_layers,
                                   interleave_map, stack, top_fill_map)
from jaxtrain.growth.events import (EVENT_FIELDS, GROWTH_KEY_SALT, LR_POLICIES, OPERATORS, POLICIES, WIDTH_RAMPS,
                                    Phase, Ramp, apply, apply_chain, check, event_args, event_errors, event_key,
                                    grow_opt_state, grow_state, layer_gate, learn_steps, masked_params, op_args,
                                    phase_at, plan, ramp_at, ramp_mask, total_flops)
from jaxtrain.growth.width import add_heads, expand_d_model, expand_head_dim, expand_mlp, rope_exact_map, split_mlp

__all__ = [
    "AxisMap", "compose_index_maps", "layer_sources", "regrid", "repeats", "without_copies",
    "IDENTITY_PLACEMENTS", "cycle_map", "interleave_map", "top_fill_map", "stack", "g_zero", "g_learn", "g_random",
    "insert_layers",
    "expand_mlp", "split_mlp", "add_heads", "rope_exact_map", "expand_head_dim", "expand_d_model",
    "OPERATORS", "POLICIES", "LR_POLICIES", "EVENT_FIELDS", "GROWTH_KEY_SALT", "op_args", "apply", "apply_chain",
    "event_args", "learn_steps", "event_key", "Phase", "Ramp", "WIDTH_RAMPS", "ramp_mask", "layer_gate", "ramp_at",
    "masked_params", "check", "plan", "event_errors", "phase_at",
    "grow_opt_state", "grow_state", "total_flops",
]
