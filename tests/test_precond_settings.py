"""A preconditioner's state is loaded only into one made with the same settings.

Before: KFAC state saved with ``damping_mode="eigen"`` loaded into a KFAC with
``"factored"`` and failed two steps later with a raw ``KeyError: 'G_inv'``; MBF's state
without spatial averaging failed in a reshape; Shampoo's blocks of another ``block_size``,
``conv_form`` or ``bias`` loaded and ran on silently. Now every setting is saved with the
state (``hyper.<name>``, through a checkpoint file too) and compared on load, and an array
whose shape differs from the one the preconditioner already holds (another model) is
refused; in both cases nothing is changed.
"""
import numpy as np
import pytest

import minidl
from minidl import checkpoint
from minidl.checkpoint import CheckpointError
from minidl.losses import SoftmaxCrossEntropy
from minidl.optim import SGD
from minidl.precond import BDF, BNP, KFAC, KFLR, KFRA, MBF, Shampoo

from reference import mlp, train_step

SIZES = (3, 4, 3)

# each method, the keyword arguments it is made with, and another value for every setting
METHODS = [
    (BNP, {}, dict(stat_decay=0.8, eps1=0.1, eps2=1e-4, T1=2, T2=2)),
    (MBF, dict(lr=0.1, fisher="true", T2=1),
     dict(damping=1e-2, stat_decay=0.8, T1=2, T2=2, momentum=0.5, kl_clip=None,
          warm_start=5, spatial_average=True, spatial_threshold=2 ** 10, norm_params="skip",
          norm_eps=1e-6, bias_correction=False, fisher="empirical")),
    (KFAC, dict(lr=0.1, T1=1, T2=1),
     dict(fisher="true", stat_decay=0.9, kl_clip=None, damping_mode="factored",
          factor_init="batch", batch_averaged=False, n_samples=2, rescale=True,
          adapt_damping=True, adapt_every=3, T1=2, T2=2)),
    (Shampoo, {}, dict(damping=1e-3, stat_decay=0.9, grafting="adagrad", graft_eps=1e-5,
                       root="eigh", bias="appended", block_size=2, T1=2, T2=2)),
    (Shampoo, {}, dict(conv_form="tensor")),
    (KFRA, dict(lr=0.1), dict(stat_decay=0.8, damping_mode="eigen", factor_init="identity",
                              rescale=True, adapt_damping=True, adapt_every=3, T1=2, T2=2)),
    (KFLR, dict(lr=0.1), dict(stat_decay=0.8, damping_mode="eigen", factor_init="identity",
                              rescale=True, adapt_damping=True, adapt_every=3, T1=2, T2=2)),
    (BDF, {}, dict(damping=1e-2, stat_decay=0.5, T1=2, T2=2)),
]


@pytest.fixture(autouse=True)
def _float64():
    minidl.set_default_dtype("float64")


def make(cls, model, loss, settings):
    """``cls(model, ...)`` with the loss and a generator where the method takes them."""
    kwargs = dict(settings)
    if cls in (MBF, KFAC, KFRA, KFLR, BDF):
        kwargs["loss"] = loss
    if cls in (MBF, KFAC):
        kwargs["rng"] = minidl.default_rng(3)
    return cls(model, **kwargs)


def saved_run(cls, base, tmp_path):
    """One training step with ``cls(**base)``; its checkpoint file."""
    rng = np.random.default_rng(0)
    model, loss = mlp(minidl.default_rng(1), SIZES), SoftmaxCrossEntropy()
    p = make(cls, model, loss, base)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    train_step(model, loss, x, y, p, SGD(model, lr=0.1))
    path = tmp_path / "run.npz"
    checkpoint.save(path, model, precond=p, epoch=1)
    return path


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("cls, base, others", METHODS,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(METHODS)])
def test_state_saved_with_other_settings_is_refused(cls, base, others, tmp_path):
    path = saved_run(cls, base, tmp_path)
    loss = SoftmaxCrossEntropy()
    same = make(cls, mlp(minidl.default_rng(1), SIZES), loss, base)
    checkpoint.load(path, same.model, precond=same)  # the same settings load
    assert same.t == 1
    for name, value in others.items():
        model = mlp(minidl.default_rng(1), SIZES)
        fresh = make(cls, model, loss, dict(base, **{name: value}))
        before = {k: np.array(v, copy=True) for k, v in fresh.state_dict().items()}
        with pytest.raises(CheckpointError, match=f"saved with other settings: {name} "):
            checkpoint.load(path, model, precond=fresh)
        after = fresh.state_dict()
        assert fresh.t == 0 and set(after) == set(before), name
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"{name}: {k}")


def kfac_after_one_step(T2):
    """A KFAC (lr 0.1, T1 = 1) on a 3-4-3 MLP after one training step; and its loss."""
    rng = np.random.default_rng(0)
    model, loss = mlp(minidl.default_rng(1), SIZES), SoftmaxCrossEntropy()
    p = KFAC(model, loss=loss, lr=0.1, T1=1, T2=T2)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    train_step(model, loss, x, y, p, SGD(model, lr=0.1))
    return p, loss


def test_kfac_eigen_state_into_factored_kfac_names_the_setting():
    """The case that used to end in ``KeyError: 'G_inv'`` two steps after the load."""
    p, loss = kfac_after_one_step(T2=2)
    other = KFAC(mlp(minidl.default_rng(1), SIZES), loss=loss, lr=0.1, T1=1, T2=2,
                 damping_mode="factored")
    with pytest.raises(ValueError, match=r"damping_mode 'eigen' \(this one: 'factored'\)"):
        other.load_state_dict(p.state_dict())


def test_state_of_another_model_is_refused_before_any_change():
    """KFAC's factors (identity from the start) of a 3-4-3 MLP into one for a 3-5-3 MLP."""
    p, loss = kfac_after_one_step(T2=1)
    wider = KFAC(mlp(minidl.default_rng(1), (3, 5, 3)), loss=loss, lr=0.1, T1=1, T2=1)
    A_before = np.array(wider.state[0]["A"], copy=True)
    with pytest.raises(ValueError, match=r"entry '0.[AG]' has shape \(4, 4\).*\(is it the state "
                                         "of another model"):
        wider.load_state_dict(p.state_dict())
    assert wider.t == 0
    np.testing.assert_array_equal(wider.state[0]["A"], A_before)


def test_string_settings_round_trip_through_a_checkpoint(tmp_path):
    """Settings such as damping_mode are strings: saved as 0-d text arrays (no pickle),
    read back as str."""
    path = saved_run(KFAC, dict(lr=0.1, damping_mode="factored", kl_clip=None), tmp_path)
    ck = checkpoint.read(path)
    assert ck.precond["hyper.damping_mode"] == "factored"
    assert ck.precond["hyper.kl_clip"] == "None"
    with np.load(path, allow_pickle=False) as f:  # plain NumPy reads it without pickle
        assert f["precond/hyper.damping_mode"].dtype.kind == "U"
