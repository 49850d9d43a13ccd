"""A minGRU LM training step with the batch split over "data" and the time axis over "seq" (recurrence.md §12).

Run on CPU with 8 simulated devices (GPUs need no flag):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/jax_sequence_parallel.py
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from linrec.backends.jax import mingru_lm
from linrec.backends.jax.distributed import sequence_parallel
from linrec.spec.mingru_lm import MinGRULMConfig, init_params
from linrec.spec.tolerances import tolerance_for

mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "seq"))  # batch over 2, time over 4
config = MinGRULMConfig(vocab_size=256, d_model=64, n_layers=2)
params = {k: jnp.asarray(v) for k, v in init_params(config, seed=0).items()}
tokens = np.random.default_rng(0).integers(0, 256, (4, 1025))
inputs, targets = (jax.device_put(jnp.asarray(t), NamedSharding(mesh, P("data", "seq")))
                   for t in (tokens[:, :-1], tokens[:, 1:]))  # T = 1024, a multiple of the 4 "seq" devices


def loss_fn(params, inputs, targets):
    logits, _ = mingru_lm(params, inputs, config=config)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1))


step = jax.jit(jax.value_and_grad(loss_fn))
with sequence_parallel(mesh, "seq"):  # every scan: a local chunk + one all_gather of (B, D) maps per layer
    loss, grads = step(params, inputs, targets)
loss_1, grads_1 = step(params, inputs, targets)  # the same step on one device
grad_error = max(float(jnp.max(jnp.abs(grads[k] - grads_1[k]))) for k in grads)
print(f"loss {float(loss):.6f} (one device {float(loss_1):.6f}), max |grad difference| {grad_error:.1e}")
# the spec's float32 tolerances over T = 1024 steps (recurrence.md §9), values and gradients
tol, grad_tol = (tolerance_for("float32", length=1024, grad=g) for g in (False, True))
assert abs(loss - loss_1) <= tol.atol + tol.rtol * abs(loss_1)
assert all(float(jnp.max(jnp.abs(grads[k] - grads_1[k])))
           <= grad_tol.atol + grad_tol.rtol * float(jnp.max(jnp.abs(grads_1[k]))) for k in grads)
