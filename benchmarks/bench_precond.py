"""Time per training step of each preconditioner relative to Adam, and its memory.

Two problems from the seed papers, each in float32 on the active backend:

* the MNIST deep autoencoder 784-1000-500-250-30-250-500-1000-784 (ReLU, sigmoid
  cross-entropy), batch 1000, with the autoencoder update periods T1=1, T2=20;
* BNP's 5-layer CNN (3x3 convs 32-64-32 + 2 dense) on 3x32x32 images, batch 128, with
  the CNN update periods T1=10, T2=100.

A "step" is forward + loss + backward + precond.step() + optimizer.step(). Each method
runs a whole number of T2 periods after a warm-up, so the inverse cost is amortised as in
training. The methods take turns (round-robin, one T2 period each per round), so a busy
neighbour on a shared machine slows all of them alike; the table shows the median step
time and the median over rounds of the ratio to Adam's time in the same round. Memory is
what the preconditioner and the optimizer keep between steps.

Run:  python benchmarks/bench_precond.py [--quick] [--problems autoencoder cnn5]
Image content does not change the timings: the autoencoder reads real MNIST from
MINIDL_DATA (or the bundled subset), the CNN uses random images.
"""
import argparse
import statistics
import time
import warnings


import minidl
from minidl import backend, models
from minidl.losses import BCEWithLogits, SoftmaxCrossEntropy
from minidl.optim import SGD, Adam
from minidl import precond as P

METHODS = ["adam", "bnp", "mbf", "kfac", "shampoo", "kfra", "kflr"]


def make_precond(name, model, crit, T1, T2):
    """The preconditioner of ``name`` with the papers' update periods (None for Adam)."""
    rng = minidl.default_rng(0)
    if name == "adam":
        return None
    if name == "bnp":
        return P.BNP(model)
    if name == "mbf":
        # dense layers above 2e7 block entries share one spatially averaged block (MBF §5)
        return P.MBF(model, T1=T1, T2=T2, spatial_threshold=2e7)
    if name == "kfac":
        # factored Tikhonov damping, as the MBF paper's KFAC baseline: two products per
        # step instead of the exact eigen-damped solve's four, and inv instead of eigh
        return P.KFAC(model, loss=crit, T1=T1, T2=T2, damping=0.03, rng=rng,
                      damping_mode="factored")
    if name == "shampoo":
        # on a CPU an eigendecomposition is much cheaper than the ~75 products of coupled
        # Newton for a 1000x1000 statistic; on a GPU the products win
        root = "eigh" if backend.get_backend() == "numpy" else "newton"
        # the bias as a column of [W | b] (one factor pair per layer, not three factors)
        return P.Shampoo(model, T1=T1, T2=T2, root=root, bias="appended")
    if name == "kfra":
        return P.KFRA(model, loss=crit, T1=T1, T2=T2)
    if name == "kflr":
        return P.KFLR(model, loss=crit, T1=T1, T2=T2)
    raise ValueError(name)


def nbytes(state):
    total = 0
    for value in state.values():
        if hasattr(value, "nbytes"):
            total += int(value.nbytes)
    return total


def problem_periods(name):
    """T2, the steps of one inverse period: the number of steps timed per round."""
    return 20 if name == "autoencoder" else 100


def problem(name, rng):
    if name == "autoencoder":
        from minidl.data import load_default
        x, _ = load_default("train")
        x = x[:1000].reshape(1000, -1).astype("float32") / 255.0  # (1000, 784)
        model = models.autoencoder("mnist", rng=rng)
        return model, BCEWithLogits(), x, x.copy(), 1, 20
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
            pre = make_precond(name, model, crit, T1, T2)
        except ValueError as err:
            return None, str(err).split(";")[0]
    opt = Adam(model, lr=1e-4) if name == "adam" else SGD(model, lr=1e-4, momentum=0.9)

    def step():
        crit.forward(model.forward(x), y)
        model.backward(crit.backward())
        if pre is not None:
            pre.step()
        opt.step()

    step()  # warm-up: allocates statistics, first inverse
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
    p.add_argument("--problems", nargs="+", default=["autoencoder", "cnn5"])
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: {' '.join(METHODS)} (Adam is always timed)")
    p.add_argument("--repeats", type=int, default=5, help="rounds for the median (5)")
    p.add_argument("--periods", type=int, default=1, help="T2 periods per round (1)")
    p.add_argument("--quick", action="store_true", help="1 round (a smoke run)")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    names = args.methods or METHODS
    names = ["adam"] + [n for n in names if n != "adam"]
    print(f"backend {backend.get_backend()}, float32, {repeats} interleaved round(s): "
          f"medians of the step time and of the per-round ratio to Adam")
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
        steps = problem_periods(prob) * args.periods
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
