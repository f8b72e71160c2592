"""The seed guide's step calculator, forwards and backwards."""
import pytest

from trainer.plan import compute_plan, epochs_for_steps


def test_25_images_20_epochs_batch_1_is_500_steps():
    # seed: 25 images at 1 repeat, 20 epochs
    assert compute_plan([(25, 1)], epochs=20, batch_size=1).total_steps == 500


def test_10_images_10_repeats_is_100_steps_per_epoch():
    plan = compute_plan([(10, 10)], epochs=1)
    assert plan.steps_per_epoch == 100 and plan.total_steps == 100


def test_batch_and_accumulation_divide_rounding_up():
    plan = compute_plan([(20, 10)], epochs=10, batch_size=2)
    assert (plan.steps_per_epoch, plan.total_steps) == (100, 1000)
    assert compute_plan([(5, 1)], epochs=1, batch_size=2, gradient_accumulation_steps=2).steps_per_epoch == 2  # 3 batches / 2


def test_regularization_doubles_the_samples_as_kohya_balances_them():
    # reference §2.4: 20 images × 10 repeats, batch 2, 10 epochs + 100 reg images → 2000 steps
    plan = compute_plan([(20, 10)], [(100, 1)], epochs=10, batch_size=2)
    assert plan.reg_samples == 200 and plan.total_steps == 2000
    # kohya_ss #1524: "max_train_steps (780 / 1 / 1 * 8 * 2) = 12480"
    assert compute_plan([(78, 10)], [(50, 1)], epochs=8).total_steps == 12480


def test_max_train_steps_caps_the_run_and_sets_the_epochs():
    plan = compute_plan([(10, 10)], epochs=10, max_train_steps=250)
    assert plan.total_steps == 250 and plan.epochs == 3


def test_buckets_never_mix_so_each_rounds_up():
    assert compute_plan([(5, 1)], epochs=1, batch_size=2, bucket_sizes=[3, 2]).steps_per_epoch == 3


def test_the_reverse_gives_epochs_for_a_target():
    assert epochs_for_steps(500, [(25, 1)]) == 20
    assert epochs_for_steps(1000, [(10, 10)]) == 10
    assert epochs_for_steps(150, [(10, 10)]) == 2
    with pytest.raises(ValueError, match="no images"):
        epochs_for_steps(10, [])
