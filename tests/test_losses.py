"""Cross-entropy: stable, reductions, masks, label validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import losses


def test_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]])
    out = losses.softmax_cross_entropy(logits, jnp.array([2, 1]), reduction="none")
    np.testing.assert_allclose(out, [2e4, 0.0], rtol=1e-12)


def test_sum_and_mean_reductions(rng):
    logits, labels = rng.randn(6, 4, 5), rng.randint(0, 5, (6, 4))
    per = losses.softmax_cross_entropy(logits, labels, reduction="none")
    ref = -np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(per, np.take_along_axis(ref, labels[..., None], -1)[..., 0], rtol=1e-12)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, reduction="sum"), per.sum(), rtol=1e-12)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), per.mean(), rtol=1e-12)


def test_mask_ignores_padding_even_if_it_is_nan(rng):
    logits, labels = rng.randn(4, 3), rng.randint(0, 3, 4)
    mask = np.array([1, 1, 0, 0])
    logits[3] = np.nan
    full = losses.softmax_cross_entropy(logits[:2], labels[:2])
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, mask=mask), full, rtol=1e-12)


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_labels_out_of_range_raise(labels):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), np.array(labels))


def test_shape_mismatch_and_unknown_reduction_raise():
    with pytest.raises(ValueError, match="does not match"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="unknown reduction"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), np.array([0, 1]), reduction="avg")


def test_binary_cross_entropy_matches_formula():
    z, t = jnp.array([-2.0, 0.5, 3.0]), jnp.array([0.0, 1.0, 1.0])
    p = 1 / (1 + np.exp(-np.asarray(z)))
    ref = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(z, t, reduction="sum"), ref.sum(), rtol=1e-12)


@pytest.mark.parametrize("mask", [[1, 0.5, 1, 0], [1, 2, 0, 0], [1, -1, 1, 1], [1, np.nan, 1, 1]])
def test_a_mask_that_is_not_zero_one_is_refused(rng, mask):
    logits, labels = rng.randn(4, 3), rng.randint(0, 3, 4)
    with pytest.raises(ValueError, match="0/1"):
        losses.softmax_cross_entropy(logits, labels, mask=np.array(mask))


def test_a_traced_mask_counts_the_same_steps_in_numerator_and_denominator(rng):
    """Under jit the mask cannot be checked; it is read as bool, so a 0.5 never doubles the mean."""
    import jax
    logits, labels = rng.randn(4, 3), rng.randint(0, 3, 4)
    per = np.asarray(losses.softmax_cross_entropy(logits, labels, reduction="none"))
    f = jax.jit(lambda m: losses.softmax_cross_entropy(logits, labels, mask=m))
    np.testing.assert_allclose(f(jnp.array([1.0, 0.5, 0.0, 0.0])), per[:2].mean(), rtol=1e-12)
    np.testing.assert_allclose(f(jnp.array([True, True, False, True])), per[[0, 1, 3]].mean(), rtol=1e-12)
    # bool and 0/1 integer masks agree
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, mask=np.array([1, 1, 0, 1])),
                               per[[0, 1, 3]].mean(), rtol=1e-12)


@pytest.mark.parametrize("bad", [-1, 3, 7])
def test_out_of_range_labels_under_jit_give_nan_not_another_class(bad):
    # traced labels cannot be checked; -1 read class V-1 and gave its finite loss
    logits = jnp.array([[0.0, 1.0, 5.0], [2.0, 0.0, 1.0]])
    labels = jnp.array([bad, 0])
    for reduction in ("mean", "sum"):
        f = jax.jit(lambda l, y: losses.softmax_cross_entropy(l, y, reduction=reduction))
        assert np.isnan(float(f(logits, labels)))
    per = jax.jit(lambda l, y: losses.softmax_cross_entropy(l, y, reduction="none"))(logits, labels)
    assert np.isnan(per[0]) and np.isfinite(per[1])


def test_masked_out_of_range_labels_under_jit_leave_loss_and_gradient_finite():
    logits = jnp.array([[0.0, 1.0, 5.0], [2.0, 0.0, 1.0]])
    f = jax.jit(lambda l: losses.softmax_cross_entropy(l, jnp.array([-1, 2]), mask=jnp.array([0, 1])))
    eager = losses.softmax_cross_entropy(logits[1:], jnp.array([2]))
    assert float(f(logits)) == pytest.approx(float(eager))
    assert np.all(np.isfinite(jax.grad(f)(logits)))


@pytest.mark.parametrize("targets", [[2.0], [-0.5], [float("nan")]])
def test_binary_targets_outside_zero_one_are_refused(targets):
    # a target of 2 gave a negative loss
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        losses.sigmoid_binary_cross_entropy(jnp.array([1.0]), jnp.array(targets))


def test_scalar_logits_are_a_named_error():
    with pytest.raises(ValueError, match="logits must be"):
        losses.softmax_cross_entropy(jnp.array(1.0), jnp.array(0))


def test_an_empty_batch_has_mean_loss_zero_like_an_all_padding_batch_not_nan():
    """Mean over no real step is 0 with a mask (all padding); without one an empty batch [T, 0]
    gave 0 / 0 = NaN, in the loss and in every gradient of a language model."""
    import jrnn
    logits = jnp.zeros((4, 0, 5))
    labels = np.zeros((4, 0), int)
    assert float(losses.softmax_cross_entropy(logits, labels)) == 0.0
    assert float(losses.softmax_cross_entropy(logits, labels, mask=np.ones((4, 0)))) == 0.0
    assert float(losses.sigmoid_binary_cross_entropy(jnp.zeros((3, 0)), np.zeros((3, 0)))) == 0.0
    model = jrnn.lm.model("lstm", vocab_size=5, hidden_size=3)
    p = model.init(jax.random.key(0))
    loss, grads = jax.value_and_grad(lambda p: model.loss(p, labels, labels)[0])(p)
    assert float(loss) == 0.0
    assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(grads))


def test_nan_logits_at_padded_steps_leave_the_gradient_finite(rng):
    """reduce's where zeroed the padded loss, but its gradient was NaN * 0 = NaN through the
    padded logits: the logits are zeroed there first (double where), for both losses."""
    logits = jnp.asarray(rng.randn(4, 2, 5)).at[0, 0].set(jnp.nan)
    labels = rng.randint(0, 5, (4, 2))
    mask = np.ones((4, 2), bool)
    mask[0, 0] = False
    value, g = jax.value_and_grad(lambda l: losses.softmax_cross_entropy(l, labels, mask=mask))(logits)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g)[0, 0])
    ref = losses.softmax_cross_entropy(logits.at[0, 0].set(1.0), labels, mask=mask, reduction="sum")
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, mask=mask, reduction="sum"), ref, rtol=1e-12)
    b_logits, targets = logits[..., 0], (rng.rand(4, 2) > 0.5).astype(float)
    g = jax.grad(lambda l: losses.sigmoid_binary_cross_entropy(l, targets, mask=mask))(b_logits)
    assert np.all(np.isfinite(np.asarray(g)))


def test_label_lists_are_read_as_numpy_reads_them_and_bad_dtypes_are_named(rng):
    logits, labels = jnp.asarray(rng.randn(3, 4)), rng.randint(0, 4, 3)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels.tolist()),   # was a JAX dtype error
                               losses.softmax_cross_entropy(logits, labels), rtol=1e-12)
    with pytest.raises(TypeError, match="logits must be floats"):
        losses.softmax_cross_entropy(np.ones((3, 4), int), labels)
    with pytest.raises(TypeError, match="logits must be floats"):
        losses.sigmoid_binary_cross_entropy(np.ones((3,), int), np.ones(3))
    with pytest.raises(TypeError, match="targets must be numbers"):
        losses.sigmoid_binary_cross_entropy(logits, np.full((3, 4), "a"))
