"""Benchmark: an MLP on the full MNIST, test accuracy after every epoch.

The target is at least 97% test accuracy within 5 epochs with a plain 784-256-128-10 ReLU
network and Adam (lr 1e-3, batch 128), float32. Run it with the data folder that holds
``mnist/train-images-idx3-ubyte.gz`` and the other three original files::

    MINIDL_DATA=/path/to/data python benchmarks/mnist_mlp.py
    MINIDL_DATA=/path/to/data python benchmarks/mnist_mlp.py --optimizer momentum --lr 0.05
    MINIDL_DATA=/path/to/data MINIDL_BACKEND=cupy python benchmarks/mnist_mlp.py

It never downloads. The exit status is 0 when the final test accuracy reaches
``--target`` (default 0.97), 1 when it does not, and 2 when the data is missing.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minidl  # noqa: E402
from minidl import data, methods, models  # noqa: E402
from minidl.losses import SoftmaxCrossEntropy  # noqa: E402
from minidl.train import fit  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="hidden widths")
    p.add_argument("--optimizer", default="adam", help="a method of minidl.methods")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--epochs", type=int, default=5, help="epochs")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    p.add_argument("--target", type=float, default=0.97, help="test accuracy to reach")
    args = p.parse_args(argv)

    if not data.data_home():
        print("mnist_mlp: set MINIDL_DATA to the folder that holds mnist/ with the four "
              "original MNIST files (train-images-idx3-ubyte.gz, ...); this benchmark needs "
              "the full data set and never downloads", file=sys.stderr)
        return 2
    try:
        x, y = data.mnist("train", download=False)        # (60000, 1, 28, 28) uint8
        x_test, y_test = data.mnist("test", download=False)  # (10000, 1, 28, 28) uint8
    except data.DataNotFoundError as err:
        print(f"mnist_mlp: full MNIST not found under MINIDL_DATA={data.data_home()}: "
              f"{str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    x, x_test = data.normalise(x), data.normalise(x_test)  # floats in [0, 1]

    model = models.mlp([784] + args.hidden + [10], rng=minidl.default_rng(args.seed))
    loss = SoftmaxCrossEntropy()
    optimizer, precond = methods.build(args.optimizer, model, loss, lr=args.lr)
    train_loader = data.DataLoader(x, y, args.batch_size, rng=minidl.default_rng(args.seed + 1))
    test_loader = data.DataLoader(x_test, y_test, 1000, shuffle=False)
    print(f"MNIST MLP {'-'.join(map(str, [784] + args.hidden + [10]))} "
          f"({model.num_params():,} parameters), {args.optimizer} lr {args.lr:g}, batch "
          f"{args.batch_size}, backend {minidl.get_backend()}, "
          f"{minidl.get_default_dtype().name}")
    start = time.perf_counter()
    history = fit(model, loss, optimizer, train_loader, epochs=args.epochs, precond=precond,
                  val_loader=test_loader, log_every=0)
    total = time.perf_counter() - start
    print(f"{'epoch':>5} {'train loss':>10} {'test loss':>9} {'test acc':>8} {'s/epoch':>8}")
    for e in history.epochs:
        print(f"{e['epoch']:>5} {e['train_loss']:>10.4f} {e['val_loss']:>9.4f} "
              f"{100 * e['val_accuracy']:>7.2f}% {e['epoch_time']:>8.2f}")
    final = history.last["val_accuracy"]
    verdict = "reached" if final >= args.target else "MISSED"
    print(f"final test accuracy {100 * final:.2f}% ({verdict} the {100 * args.target:.0f}% "
          f"target); {total:.1f} s in all, {history.last['time']:.1f} s training")
    return 0 if final >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
