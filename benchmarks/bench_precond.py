"""Time per training step of each preconditioner relative to Adam, and its memory.

Three problems, each in float32 on the active backend:

* the MNIST deep autoencoder 784-1000-500-250-30-250-500-1000-784 (ReLU, sigmoid
  cross-entropy), batch 1000, with the autoencoder update periods T1=1, T2=20;
* BNP's 5-layer CNN (3x3 convs 32-64-32 + 2 dense) on 3x32x32 images, batch 128, with
  the CNN update periods T1=10, T2=100;
* the command line's MLP 784-100-100-10 on MNIST, batch 128, with every method exactly as
  ``minidl.methods.build`` makes it (the table's periods; ``minidl compare``'s setting).

Every method is built by ``minidl.methods.build`` (its table defaults, SGD momentum 0.9,
the step bounds on), with only the periods T1/T2 of the first two problems set, plus the
choices noted in ``EXTRA``. A "step" is forward + loss + backward + precond.step() +
optimizer.step(). Each method
runs a whole number of T2 periods after a warm-up, so the inverse cost is amortised as in
training. The methods take turns (round-robin, one T2 period each per round), so a busy
neighbour on a shared machine slows all of them alike; the table shows the median step
time and the median over rounds of the ratio to Adam's time in the same round. Memory is
what the preconditioner and the optimizer keep between steps.

Run:  python benchmarks/bench_precond.py [--quick] [--problems autoencoder cnn5 mlp]
(for timings quoted anywhere: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...; the
BLAS library, its kernel and thread count are printed first)
Image content does not change the timings: the autoencoder reads real MNIST from
MINIDL_DATA (or the bundled subset), the CNN uses random images.
"""
import argparse
import statistics
import time
import warnings


import minidl
from minidl import backend, methods, models
from minidl.losses import BCEWithLogits, SoftmaxCrossEntropy

METHODS = ["adam", "bnp", "mbf", "kfac", "shampoo", "kfra", "kflr"]

# choices beyond the table, for the paper problems (autoencoder, cnn5)
EXTRA = {
    # factored Tikhonov damping, as the MBF paper's KFAC baseline on autoencoders: two
    # products per step instead of the exact eigen-damped solve's four, inv instead of eigh
    "kfac": {"damping_mode": "factored"},
    # the bias as a column of [W | b] (one factor pair per layer, not three factors)
    "shampoo": {"bias": "appended"},
}


def blas_info():
    """One line per BLAS library loaded: its name, kernel and thread count (threadpoolctl)."""
    from threadpoolctl import threadpool_info
    return [f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')} "
            f"threads {i.get('num_threads')}" for i in threadpool_info()]


def make_method(name, model, crit, T1, T2):
    """(optimizer, preconditioner) of ``name`` via ``methods.build``; T1/T2 None: the table's."""
    kw = {} if T1 is None else {"T1": T1, "T2": T2, **EXTRA.get(name, {})}
    return methods.build(name, model, crit, rng=minidl.default_rng(0),
                         precond_kw=kw if methods.METHODS[name].precond else None)


def nbytes(state):
    total = 0
    for value in state.values():
        if hasattr(value, "nbytes"):
            total += int(value.nbytes)
    return total


def problem_periods(name):
    """Steps timed per round: one inverse period (the table's KFAC T2 = 10 ... Shampoo 20)."""
    return {"autoencoder": 20, "cnn5": 100, "mlp": 20}[name]


def problem(name, rng):
    """(model, loss, x, y, T1, T2); T1 = T2 = None keeps the methods table's periods."""
    if name in ("autoencoder", "mlp"):
        from minidl.data import load_default
        x, y = load_default("train")
        x = x.reshape(x.shape[0], -1).astype("float32") / 255.0  # (N, 784)
        if name == "mlp":
            model = models.mlp([784, 100, 100, 10], rng=rng)
            return model, SoftmaxCrossEntropy(), x[:128], y[:128], None, None
        model = models.autoencoder("mnist", rng=rng)
        return model, BCEWithLogits(), x[:1000], x[:1000].copy(), 1, 20
    x = rng.standard_normal((128, 3, 32, 32)).astype("float32")  # (128, 3, 32, 32)
    y = rng.integers(0, 10, 128)
    model = models.cnn5((3, 32, 32), 10, rng=rng)
    return model, SoftmaxCrossEntropy(), x, y, 10, 100


def setup_method(name, prob):
    """(step, memory): one training step of ``name`` on ``prob`` and its state size.

    Returns (None, reason) where the method does not cover the problem.
    """
    model, crit, x, y, T1, T2 = problem(prob, minidl.default_rng(0))
    model.to_backend()
    x, y = backend.asarray(x), backend.asarray(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opt, pre = make_method(name, model, crit, T1, T2)
        except ValueError as err:
            return None, str(err).split(";")[0]
    opt.lr = 1e-5  # the time of a step does not depend on it; keeps the weights sane

    def step():
        crit.forward(model.forward(x), y)
        model.backward(crit.backward())
        if pre is not None:
            pre.step()
        opt.step()

    step()  # warm-up: allocates statistics, first inverse
    if hasattr(pre, "warm_steps"):
        # MBF's in-step warm start (an inverse after each of its first updates) is a
        # transient; mark it done so that the rounds time the steady state
        for s in pre.state:
            s["n_warm"] = backend.asarray(pre.warm_steps)
    sync()
    memory = nbytes(opt.state_dict()) + (nbytes(pre.state_dict()) if pre else 0)
    return step, memory


def time_steps(step, steps):
    """Mean seconds per step over ``steps`` consecutive steps."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def sync():
    if backend.get_backend() == "cupy":
        backend.xp().cuda.Device().synchronize()


# KFLR back-propagates one column of the loss Hessian's factor per output unit: 784
# backward passes per statistics update on the autoencoder (every step at T1 = 1)
SLOW = {("autoencoder", "kflr"): "784 backward passes per step at T1=1; name it to time it"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", default=["autoencoder", "cnn5", "mlp"])
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: {' '.join(METHODS)} (Adam is always timed)")
    p.add_argument("--repeats", type=int, default=5, help="rounds for the median (5)")
    p.add_argument("--periods", type=int, default=1, help="T2 periods per round (1)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per round instead of whole T2 periods (a quicker, rougher "
                        "ratio: the inverse cost is then not amortised)")
    p.add_argument("--quick", action="store_true", help="1 round (a smoke run)")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    names = args.methods or METHODS
    names = ["adam"] + [n for n in names if n != "adam"]
    print(f"backend {backend.get_backend()}, float32, {repeats} interleaved round(s): "
          f"medians of the step time and of the per-round ratio to Adam")
    for line in blas_info():
        print("BLAS:", line)
    for prob in args.problems:
        steppers, memory, skipped = {}, {}, {}
        for name in names:
            if (prob, name) in SLOW and args.methods is None:
                skipped[name] = SLOW[(prob, name)]
                continue
            step, mem = setup_method(name, prob)
            if step is None:
                skipped[name] = mem
                continue
            steppers[name], memory[name] = step, mem
        steps = args.steps or problem_periods(prob) * args.periods
        times = {name: [] for name in steppers}
        for _ in range(repeats):  # round-robin: a noisy neighbour slows every method alike
            for name, step in steppers.items():
                times[name].append(time_steps(step, steps))
        print(f"\n{prob} ({steps} steps per method per round)")
        print(f"{'method':<9} {'ms/step':>9} {'x Adam':>7} {'memory MB':>10}")
        for name in names:
            if name in skipped:
                print(f"{name:<9} {'n/a':>9}  ({skipped[name]})")
                continue
            ratio = statistics.median(t / a for t, a in zip(times[name], times["adam"]))
            print(f"{name:<9} {1e3 * statistics.median(times[name]):9.1f} {ratio:7.2f} "
                  f"{memory[name] / 2**20:10.1f}")


if __name__ == "__main__":
    main()
