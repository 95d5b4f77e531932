"""Training-step throughput of the feature-interaction layers against their baselines.

Measures forward + backward examples/s (loss = mean of the output, gradients with
`tf.GradientTape` for the layers' variables and the input, plain SGD applied) of:

| model | what | baseline |
|---|---|---|
| `crossnet_v2_full` | 3 x `CrossNetV2()` on `[batch, 256]` | `tfrs_cross_full` |
| `crossnet_v2_low` | 3 x `CrossNetV2(projection_dim=64)` | `tfrs_cross_low` |
| `crossnet_mix` | 3 x `CrossNetMix(num_experts=4, low_rank=32)` | `naive_mix` |
| `fm` | `FactorizationMachine()` on `[batch, 16 fields, 16]` | `fm_pairwise` |

`tfrs_cross_*` stack `tfrs.layers.dcn.Cross` to the same depth; `naive_mix` is a per-expert
mixture written here (a Python loop over experts with separate weights, experts stacked then
mixed by the softmax gates); `fm_pairwise` builds every field pair explicitly. FM has no weights
and no depth: one layer, gradient w.r.t. its input embeddings.

Each configuration (device x batch size x XLA on/off x model) is warmed up, then timed over
`--repeats` repetitions of `--steps` steps; the MEDIAN repetition is reported. The models of one
(device, batch, XLA) group are timed interleaved, so machine noise hits them alike.

    python -m benchmarks.cross_layers [--batch_sizes 1024 4096] [--steps N] [--json]

With `--json` the last line of stdout is one JSON object with every figure and the ratios
(ours / tfrs, mix / naive, fm / pairwise; > 1 means ours is faster).
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

from common import cli
from trainer.layers.cross import CrossNetV2
from trainer.layers.cross_mix import CrossNetMix
from trainer.layers.fm import FactorizationMachine

DIM = 256
DEPTH = 3
PROJECTION_DIM = 64
EXPERTS = 4
LOW_RANK = 32
FM_FIELDS = 16
FM_DIM = 16
LEARNING_RATE = 1e-4

# (ours, baseline) pairs for the ratios.
COMPARISONS = (
    ("crossnet_v2_full", "tfrs_cross_full"),
    ("crossnet_v2_low", "tfrs_cross_low"),
    ("crossnet_mix", "naive_mix"),
    ("fm", "fm_pairwise"),
)


class NaiveCrossNetMix(tf.keras.layers.Layer):
    """DCN-v2 mixture of low-rank experts with one set of weights and one code path per expert.

    The usual straightforward implementation: for each expert `i`,
    `E_i = x0 * (U_i tanh(C_i tanh(V_i^T x)) + b)` and a gate logit `x w_i`; the expert outputs
    are stacked into `[batch, dim, experts]` and mixed by the softmax of the gate logits.
    """

    def __init__(self, num_experts: int, low_rank: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.low_rank = low_rank

    def build(self, input_shape: tf.TensorShape) -> None:
        dim = int(input_shape[-1])
        init = "truncated_normal"
        self.v = [self.add_weight(f"v_{i}", [dim, self.low_rank], initializer=init)
                  for i in range(self.num_experts)]
        self.c = [self.add_weight(f"c_{i}", [self.low_rank, self.low_rank], initializer=init)
                  for i in range(self.num_experts)]
        self.u = [self.add_weight(f"u_{i}", [self.low_rank, dim], initializer=init)
                  for i in range(self.num_experts)]
        self.g = [self.add_weight(f"gate_{i}", [dim, 1], initializer=init)
                  for i in range(self.num_experts)]
        self.b = self.add_weight("bias", [dim], initializer="zeros")
        super().build(input_shape)

    def call(self, x0: tf.Tensor, x: tf.Tensor | None = None) -> tf.Tensor:
        x = x0 if x is None else x
        experts, logits = [], []
        for i in range(self.num_experts):
            h = tf.tanh(tf.matmul(x, self.v[i]))  # [batch, rank]
            h = tf.tanh(tf.matmul(h, self.c[i]))  # [batch, rank]
            experts.append(x0 * (tf.matmul(h, self.u[i]) + self.b))  # [batch, dim]
            logits.append(tf.matmul(x, self.g[i]))  # [batch, 1]
        stacked = tf.stack(experts, axis=2)  # [batch, dim, experts]
        gates = tf.nn.softmax(tf.concat(logits, axis=1), axis=-1)  # [batch, experts]
        mixed = tf.matmul(stacked, gates[:, :, tf.newaxis])  # [batch, dim, 1]
        return tf.squeeze(mixed, axis=2) + x


def pairwise_fm(v: tf.Tensor) -> tf.Tensor:
    """`Σ_{f<g} v_f ⊙ v_g` with every pair built: `[batch, fields, dim]` -> `[batch, dim]`."""
    fields = v.shape[1]
    pairs = tf.einsum("bfd,bgd->bfgd", v, v)  # [batch, fields, fields, dim]
    upper = tf.linalg.band_part(tf.ones([fields, fields]), 0, -1) - tf.eye(fields)  # f < g
    return tf.einsum("bfgd,fg->bd", pairs, upper)


def cross_stack(make: Callable[[], tf.keras.layers.Layer]) -> tuple[Callable, list]:
    layers = [make() for _ in range(DEPTH)]

    def forward(x0: tf.Tensor) -> tf.Tensor:
        x = layers[0](x0)
        for layer in layers[1:]:
            x = layer(x0, x)
        return x

    return forward, layers


def build_model(name: str, batch: int) -> tuple[Callable, tf.Variable, list[tf.Variable]]:
    """Returns (forward, input variable, all trained variables) of a freshly built model."""
    if name in ("fm", "fm_pairwise"):
        layers = [FactorizationMachine()] if name == "fm" else []
        forward = layers[0] if layers else pairwise_fm
        x = tf.Variable(tf.random.normal([batch, FM_FIELDS, FM_DIM]), name="embeddings")
    else:
        makers = {
            "crossnet_v2_full": CrossNetV2,
            "tfrs_cross_full": tfrs.layers.dcn.Cross,
            "crossnet_v2_low": lambda: CrossNetV2(projection_dim=PROJECTION_DIM),
            "tfrs_cross_low": lambda: tfrs.layers.dcn.Cross(projection_dim=PROJECTION_DIM),
            "crossnet_mix": lambda: CrossNetMix(num_experts=EXPERTS, low_rank=LOW_RANK),
            "naive_mix": lambda: NaiveCrossNetMix(num_experts=EXPERTS, low_rank=LOW_RANK),
        }
        forward, layers = cross_stack(makers[name])
        x = tf.Variable(tf.random.normal([batch, DIM]), name="inputs")
    forward(x)  # builds the layers
    variables = [v for layer in layers for v in layer.trainable_variables] + [x]
    return forward, x, variables


def make_step(forward: Callable, x: tf.Variable, variables: list, xla: bool) -> Callable:
    @tf.function(jit_compile=xla)
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(forward(x))
        grads = tape.gradient(loss, variables)
        for var, grad in zip(variables, grads, strict=True):
            var.assign_sub(LEARNING_RATE * grad)
        return loss

    return step


def time_group(
    device: str,
    batch: int,
    xla: bool,
    names: Sequence[str],
    steps: int,
    repeats: int,
    warmup: int,
) -> list[dict[str, Any]]:
    """Times every model of one (device, batch, xla) group.

    The models are built and warmed up first, then the repetitions interleave them (in a
    rotating order), so that a slow period of a shared machine hits all of them alike.
    """
    tf.keras.utils.set_random_seed(0)
    built, seconds = {}, {name: [] for name in names}
    with tf.device(f"/{device}:0"):
        for name in names:
            forward, x, variables = build_model(name, batch)
            step = make_step(forward, x, variables, xla)
            for _ in range(warmup):  # tracing, XLA compilation, allocator warm-up
                step().numpy()
            built[name] = (step, variables)
        for rep in range(repeats):
            shift = rep % len(names)
            for name in [*names[shift:], *names[:shift]]:
                step = built[name][0]
                start = time.perf_counter()
                for _ in range(steps):
                    loss = step()
                loss.numpy()  # waits for the device
                seconds[name].append(time.perf_counter() - start)
    results = []
    for name in names:
        median = statistics.median(seconds[name])
        results.append({
            "device": device,
            "model": name,
            "batch": batch,
            "xla": xla,
            "step_ms": 1000.0 * median / steps,
            "examples_per_s": batch * steps / median,
            "params": sum(int(v.shape.num_elements()) for v in built[name][1][:-1]),
        })
    return results


def ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    index = {(r["device"], r["batch"], r["xla"], r["model"]): r for r in results}
    out = []
    for device, batch, xla in sorted({(r["device"], r["batch"], r["xla"]) for r in results}):
        for ours, base in COMPARISONS:
            a, b = index.get((device, batch, xla, ours)), index.get((device, batch, xla, base))
            if a and b:
                out.append({
                    "device": device, "batch": batch, "xla": xla, "ours": ours, "baseline": base,
                    "speedup": a["examples_per_s"] / b["examples_per_s"],
                })
    return out


def print_table(results: Sequence[dict[str, Any]], speedups: Sequence[dict[str, Any]]) -> None:
    base_of = dict(COMPARISONS)
    speed = {(s["device"], s["batch"], s["xla"], s["ours"]): s["speedup"] for s in speedups}
    header = (f"{'device':<7} {'batch':>6} {'xla':>5}  {'model':<17} {'params':>8} "
              f"{'step ms':>9} {'examples/s':>12}  vs baseline")
    print(header)
    print("-" * len(header))
    for r in results:
        key = (r["device"], r["batch"], r["xla"], r["model"])
        versus = f"{speed[key]:.2f}x {base_of[r['model']]}" if key in speed else ""
        print(f"{r['device']:<7} {r['batch']:>6} {('on' if r['xla'] else 'off'):>5}  "
              f"{r['model']:<17} {r['params']:>8} {r['step_ms']:>9.2f} "
              f"{r['examples_per_s']:>12,.0f}  {versus}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m benchmarks.cross_layers",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repetition")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--models", nargs="+", default=[m for pair in COMPARISONS for m in pair])
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - {m for pair in COMPARISONS for m in pair})
    if unknown:
        parser.error(f"unknown --models {unknown}; known: "
                     f"{sorted({m for pair in COMPARISONS for m in pair})}")
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch_sizes, --steps and --repeats must be >= 1, --warmup >= 0")
    return cli.run(lambda: measure(args), args)


def measure(args) -> dict[str, Any]:
    """The timings and the printed tables of `main` (module doc)."""
    devices = ["CPU"] + (["GPU"] if tf.config.list_physical_devices("GPU") else [])
    started = time.perf_counter()
    results = []
    for device in devices:
        for batch in args.batch_sizes:
            for xla in (False, True):
                results += time_group(
                    device, batch, xla, args.models, args.steps, args.repeats, args.warmup
                )
    speedups = ratios(results)
    settings = {
        "dim": DIM, "depth": DEPTH, "projection_dim": PROJECTION_DIM, "num_experts": EXPERTS,
        "low_rank": LOW_RANK, "fm_fields": FM_FIELDS, "fm_dim": FM_DIM,
        "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
        "statistic": "median over repeats", "tensorflow": tf.__version__,
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"forward+backward+SGD training step, float32; dim={DIM}, depth={DEPTH}, "
          f"projection_dim={PROJECTION_DIM}, experts={EXPERTS}x rank {LOW_RANK}, "
          f"FM [batch, {FM_FIELDS}, {FM_DIM}]; median of {args.repeats} x {args.steps} steps; "
          f"TF {tf.__version__}, {os.cpu_count()} CPUs, GPUs: {settings['gpus'] or 'none'}")
    print_table(results, speedups)
    print(f"total {settings['seconds']} s")
    return {"settings": settings, "results": results, "ratios": speedups}


if __name__ == "__main__":
    sys.exit(main())
