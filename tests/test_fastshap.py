"""FastSHAP: the kernel sampler, the objective against exact Shapley values, the surrogate, the module, export
and the evaluate method."""

from __future__ import annotations

import itertools
import math

import lightning.pytorch as pl
import pytest
import torch

from explainer.callbacks import ExportExplainer
from explainer.data.digits import DigitScenesDataModule
from explainer.export import load
from explainer.losses_fastshap import (
    cell_masks,
    distillation_loss,
    efficiency_gap,
    efficiency_normalize,
    fastshap_loss,
    shapley_kernel_sample,
    shapley_kernel_size_probabilities,
    uniform_size_sample,
)
from explainer.methods import build_method, method_class
from explainer.modules import ClassifierModule, FastSHAPModule
from explainer.nets import build_mask_net
from tests.helpers import write_classifier_checkpoint

NET = {"mask_net_kwargs": {"body": "unet", "body_kwargs": {"width": 4, "depth": 2}}}


def _dm(**kw):
    args = dict(image_size=32, train_scenes=16, val_scenes=8, test_scenes=8, batch_size=8)
    return DigitScenesDataModule(**{**args, **kw})


def _trainer(tmp_path, **kw):
    args = dict(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
    )
    return pl.Trainer(**{**args, **kw})


@pytest.fixture
def classifier_ckpt(tmp_path):
    return write_classifier_checkpoint(tmp_path)[1]


@pytest.fixture
def surrogate_ckpt(tmp_path):
    folder = tmp_path / "surrogate"
    folder.mkdir()
    return write_classifier_checkpoint(folder, seed=1)[1]


def exact_shapley(game, d: int) -> torch.Tensor:
    """Shapley values ``[..., d]`` of ``game(S [N, d]) -> [N, ...]`` by enumeration of every coalition."""
    coalitions = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))
    values = game(coalitions)
    index = {tuple(c.int().tolist()): i for i, c in enumerate(coalitions)}
    phi = torch.zeros(*values.shape[1:], d, dtype=values.dtype)
    for i in range(d):
        for c in coalitions:
            if c[i]:
                continue
            k = int(c.sum())
            weight = math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
            with_i = c.clone()
            with_i[i] = 1
            phi[..., i] += weight * (
                values[index[tuple(with_i.int().tolist())]] - values[index[tuple(c.int().tolist())]]
            )
    return phi


# -- the sampler ---------------------------------------------------------------------------------------------
def test_kernel_size_distribution_matches_the_shapley_kernel():
    d = 6
    probs = shapley_kernel_size_probabilities(d)
    k = torch.arange(1, d, dtype=torch.float64)
    expected = (d - 1) / (k * (d - k))
    assert probs[0] == 0 and probs[d] == 0
    torch.testing.assert_close(probs[1:d], expected / expected.sum())
    subsets = shapley_kernel_sample(500, d, 40, paired=False, generator=torch.Generator().manual_seed(0))
    sizes = subsets.sum(-1).long().flatten()
    freq = torch.bincount(sizes, minlength=d + 1).double() / sizes.numel()
    assert float((freq - probs).abs().max()) < 0.01
    # within a size, every player is equally likely: the marginal of each player is 1/2 by symmetry of p(k)
    torch.testing.assert_close(
        subsets.mean((0, 1)).double(), torch.full((d,), 0.5, dtype=torch.float64), atol=0.01, rtol=0
    )


def test_paired_sampling_adds_complements():
    subsets = shapley_kernel_sample(3, 9, 8, generator=torch.Generator().manual_seed(1))
    assert subsets.shape == (3, 8, 9)
    torch.testing.assert_close(subsets[:, 4:], 1 - subsets[:, :4])
    sizes = subsets.sum(-1)
    assert bool(((sizes > 0) & (sizes < 9)).all())
    with pytest.raises(ValueError, match="even"):
        shapley_kernel_sample(1, 9, 3)


def test_uniform_size_sample_and_cell_masks():
    subsets = uniform_size_sample(4000, 4, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(subsets.sum(-1).long(), minlength=5).double() / 4000
    assert float((freq - 0.2).abs().max()) < 0.03
    s = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    masks = cell_masks(s, 2, (4, 6))
    assert masks.shape == (1, 1, 4, 6)
    expected = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]).float()
    torch.testing.assert_close(masks[0, 0], expected)


# -- the objective ----------------------------------------------------------------------------------------------
def test_efficiency_normalisation_sums_to_the_total():
    phi = torch.randn(2, 3, 7)
    total = torch.randn(2, 3)
    out = efficiency_normalize(phi, total)
    torch.testing.assert_close(out.sum(-1), total)
    # the correction is the same for every player
    diff = out - phi
    torch.testing.assert_close(diff, diff[..., :1].expand_as(diff))
    assert float(efficiency_gap(out, total)) < 1e-10
    assert float(efficiency_gap(phi, total)) > 0


def test_loss_is_zero_at_the_shapley_values_of_an_additive_game():
    b, c, d, n = 2, 3, 6, 32
    w = torch.randn(b, c, d)
    subsets = shapley_kernel_sample(b, d, n)
    null = torch.randn(b, c)
    values = null.unsqueeze(1) + torch.einsum("bnd,bcd->bnc", subsets, w)
    assert float(fastshap_loss(w, subsets, values, null)) < 1e-10
    assert float(fastshap_loss(w + 0.1 * torch.randn_like(w), subsets, values, null)) > 1e-3


def _interacting_game(s):  # [N, d=5] -> [N, 2]: pairwise and three-way interactions
    a = torch.tensor([0.3, -0.2, 0.5, 0.1, 0.0], dtype=s.dtype)
    first = s @ a + 0.8 * s[:, 0] * s[:, 1] - 0.5 * s[:, 2] * s[:, 3] * s[:, 4]
    second = torch.sigmoid(2 * s.sum(1) - 4) + 0.3 * s[:, 1] * s[:, 4]
    return torch.stack([first, second], 1)


def test_the_expected_loss_is_minimised_by_the_exact_shapley_values_of_a_game_with_interactions():
    """Over every coalition weighted by its kernel probability, the efficiency-normalised least squares is
    minimised by the Shapley values (checked against enumeration), not by any other values."""
    d = 5
    exact = exact_shapley(_interacting_game, d).double()  # [2, d]
    full = _interacting_game(torch.ones(1, d, dtype=torch.float64))[0]
    null = _interacting_game(torch.zeros(1, d, dtype=torch.float64))[0]
    torch.testing.assert_close(exact.sum(-1), full - null)
    subsets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)
    subsets = subsets[(subsets.sum(1) > 0) & (subsets.sum(1) < d)]
    sizes = subsets.sum(1).long()
    weights = shapley_kernel_size_probabilities(d)[sizes] / torch.tensor([math.comb(d, int(k)) for k in sizes])
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    values = _interacting_game(subsets).unsqueeze(0)

    def expected_loss(raw):
        phi = efficiency_normalize(raw, (full - null).unsqueeze(0))
        return fastshap_loss(phi, subsets.unsqueeze(0), values, null.unsqueeze(0), weights)

    raw = torch.zeros(1, 2, d, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([raw], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimiser.zero_grad()
        loss = expected_loss(raw)
        loss.backward()
        return loss

    optimiser.step(closure)
    learned = efficiency_normalize(raw.detach(), (full - null).unsqueeze(0))[0]
    torch.testing.assert_close(learned, exact, atol=1e-6, rtol=0)
    at_exact = expected_loss(exact.unsqueeze(0))
    for _ in range(5):  # any other efficient values do worse
        other = exact + 0.05 * torch.randn_like(exact)
        assert float(expected_loss(other.unsqueeze(0))) > float(at_exact)


def test_training_on_sampled_coalitions_approaches_the_shapley_values():
    torch.manual_seed(0)
    d = 5
    exact = exact_shapley(_interacting_game, d)
    full, null = _interacting_game(torch.ones(1, d))[0], _interacting_game(torch.zeros(1, d))[0]
    generator = torch.Generator().manual_seed(0)
    subsets = shapley_kernel_sample(1, d, 4096, generator=generator)
    values = _interacting_game(subsets[0]).unsqueeze(0)
    raw = torch.zeros(1, 2, d, requires_grad=True)
    optimiser = torch.optim.Adam([raw], lr=0.05)
    for _ in range(300):
        phi = efficiency_normalize(raw, (full - null).unsqueeze(0))
        loss = fastshap_loss(phi, subsets, values, null.unsqueeze(0))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    learned = efficiency_normalize(raw.detach(), (full - null).unsqueeze(0))[0]
    torch.testing.assert_close(learned, exact, atol=0.02, rtol=0)


def test_distillation_loss_is_minimal_at_the_teacher():
    teacher = torch.softmax(torch.randn(4, 5), 1)
    at_teacher = distillation_loss(teacher.log(), teacher, "softmax")
    assert abs(float(at_teacher)) < 1e-6
    assert float(distillation_loss(torch.randn(4, 5), teacher, "softmax")) > 0
    probs = torch.rand(4, 5) * 0.8 + 0.1
    best = distillation_loss(torch.logit(probs), probs, "sigmoid")
    assert float(distillation_loss(torch.logit(probs) + 0.5, probs, "sigmoid")) > float(best)


# -- the network ----------------------------------------------------------------------------------------------
def test_cell_values_net_is_constant_on_cells_and_refuses_a_grid_that_does_not_divide():
    net = build_mask_net("shapley_cells", 3, grid=4, **NET["mask_net_kwargs"])
    images = torch.randn(2, 3, 32, 32)
    cells = net.cell_values(images)
    assert cells.shape == (2, 3, 4, 4)
    maps = net(images)
    assert maps.shape == (2, 3, 32, 32)
    torch.testing.assert_close(maps[:, :, ::8, ::8], cells)
    torch.testing.assert_close(maps[:, :, 7::8, 7::8], cells)
    assert net.head_prefix == "body.head."
    with pytest.raises(ValueError, match=r"5x5 cell grid does not divide 32x32 images.*set grid to a divisor"):
        build_mask_net("shapley_cells", 3, grid=5, **NET["mask_net_kwargs"]).cell_values(images)


# -- the surrogate ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a training run (the default suite keeps to its time budget)
def test_surrogate_trains_on_cell_masked_images_against_the_teacher(classifier_ckpt, tmp_path):
    module = ClassifierModule(
        backbone="tests.helpers:tiny_net", teacher=str(classifier_ckpt), mask_cells=4, init_from_teacher=True
    )
    for key, value in module.teacher.net.state_dict().items():
        torch.testing.assert_close(module.net.state_dict()[key], value)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=2, enable_checkpointing=True, limit_val_batches=1)
    trainer.fit(module, datamodule=_dm())
    assert torch.isfinite(trainer.logged_metrics["train/loss"])
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key])
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["teacher"] == str(classifier_ckpt)
    reloaded = ClassifierModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert reloaded.teacher is not None


def test_surrogate_option_errors(classifier_ckpt):
    with pytest.raises(ValueError, match="set activation: sigmoid"):
        ClassifierModule(backbone="tests.helpers:tiny_net", teacher=str(classifier_ckpt), activation="softmax")
    with pytest.raises(ValueError, match="set backbone to the teacher's architecture"):
        ClassifierModule(backbone="digitnet", teacher=str(classifier_ckpt), init_from_teacher=True)
    with pytest.raises(ValueError, match="needs a teacher"):
        ClassifierModule(backbone="tests.helpers:tiny_net", init_from_teacher=True)
    with pytest.raises(ValueError, match="not together with random_masks"):
        ClassifierModule(backbone="tests.helpers:tiny_net", mask_cells=4, random_masks=True)


# -- the module ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_function", ["surrogate", "classifier"])
@pytest.mark.slow  # a training run (the default suite keeps to its time budget)
def test_module_trains_with_finite_loss_and_only_the_network_moves(
    value_function, classifier_ckpt, surrogate_ckpt, tmp_path
):
    module = FastSHAPModule(
        str(classifier_ckpt),
        grid=4,
        num_samples=8,
        value_function=value_function,
        surrogate=str(surrogate_ckpt) if value_function == "surrogate" else None,
        lr=1e-2,
        **NET,
    )
    frozen = module.value_model
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    net_before = {k: v.clone() for k, v in module.mask_net.state_dict().items()}
    optimiser = module.configure_optimizers()
    assert {id(p) for g in optimiser.param_groups for p in g["params"]} == {id(p) for p in module.mask_net.parameters()}
    trainer = _trainer(tmp_path, max_steps=3, enable_checkpointing=True, limit_val_batches=1)
    trainer.fit(module, datamodule=_dm())
    assert torch.isfinite(trainer.logged_metrics["train/loss"])
    assert torch.isfinite(trainer.logged_metrics["val/loss_least_squares"])
    for key, value in frozen.state_dict().items():
        assert torch.equal(value, before[key])
    assert any(not torch.equal(v, net_before[k]) for k, v in module.mask_net.state_dict().items())
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert not any(k.startswith(("classifier.", "surrogate.")) for k in ckpt["state_dict"])
    reloaded = FastSHAPModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert reloaded.hparams.value_function == value_function
    # the normalised values satisfy efficiency on every image and class
    batch = next(iter(_dm().val_dataloader()))
    module.eval()
    with torch.no_grad():
        out = module.explain_batch(batch)
        probs = module.value_probabilities(torch.cat([batch.image, torch.zeros_like(batch.image)]))
    full, null = probs.chunk(2)
    torch.testing.assert_close(out["values"].sum(-1), full - null, atol=1e-5, rtol=0)


def test_surrogate_checkpoint_is_checked_by_hash(classifier_ckpt, surrogate_ckpt):
    with pytest.raises(ValueError, match="not the one this FastSHAP was trained with"):
        FastSHAPModule(str(classifier_ckpt), grid=4, surrogate=str(surrogate_ckpt), surrogate_hash="0" * 64, **NET)


def test_missing_surrogate_says_how_to_train_one(classifier_ckpt, tmp_path):
    for given in (None, str(tmp_path / "nowhere.ckpt")):
        with pytest.raises(FileNotFoundError, match=r"python train.py fit --config configs/quickstart/surrogate.yaml"):
            FastSHAPModule(str(classifier_ckpt), grid=4, value_function="surrogate", surrogate=given, **NET)


def test_option_errors(classifier_ckpt, surrogate_ckpt, tmp_path):
    with pytest.raises(ValueError, match="even number"):
        FastSHAPModule(str(classifier_ckpt), grid=4, num_samples=7, value_function="classifier", **NET)
    with pytest.raises(ValueError, match="set fill: mean"):
        FastSHAPModule(str(classifier_ckpt), grid=4, surrogate=str(surrogate_ckpt), fill="blur", **NET)
    module = FastSHAPModule(str(classifier_ckpt), grid=5, value_function="classifier", **NET)
    trainer = _trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"5x5 cell grid does not divide 32x32 images"):
        trainer.fit(module, datamodule=_dm())


# -- export, load, evaluate ---------------------------------------------------------------------------------------
def test_export_load_explain_round_trip_and_the_evaluate_method(classifier_ckpt, surrogate_ckpt, tmp_path):
    module = FastSHAPModule(str(classifier_ckpt), grid=4, num_samples=8, surrogate=str(surrogate_ckpt), **NET)
    folder = tmp_path / "fastshap"
    trainer = _trainer(
        tmp_path, max_steps=2, enable_checkpointing=True, limit_val_batches=1, callbacks=[ExportExplainer(str(folder))]
    )
    trainer.fit(module, datamodule=_dm())
    loaded = load(folder)
    assert loaded.kind == "fastshap" and loaded.map_output == "values"
    assert loaded.config["fastshap"]["grid"] == 4
    assert loaded.config["fastshap"]["surrogate_sha256"] == module.surrogate.content_hash
    images = next(iter(_dm().val_dataloader())).image
    module.eval()
    with torch.no_grad():
        expected = module(images)
    values = loaded.explain(images)
    torch.testing.assert_close(values, expected)
    assert bool((values < 0).any())  # values, not masks through a sigmoid
    classes = torch.tensor([[3, 1]]).expand(len(images), -1)
    method = build_method("fastshap", path=str(folder))
    maps = method.attribute(images, classes)
    torch.testing.assert_close(maps, expected[:, [3, 1]])
    assert method_class("fastshap").unit_range is False
    assert method_class("fastshap").cost == "one pass"
    ckpt_maps = build_method("fastshap", path=trainer.checkpoint_callback.best_model_path).attribute(images, classes)
    torch.testing.assert_close(ckpt_maps, maps)


def test_fastshap_method_refuses_a_mask_export(classifier_ckpt, tmp_path):
    from explainer.export import export_explainer
    from explainer.modules import ExplainerModule

    explainer = ExplainerModule(str(classifier_ckpt), mask_net="unet", mask_net_kwargs={"width": 4, "depth": 2})
    folder = export_explainer(explainer, tmp_path / "explainer")
    with pytest.raises(ValueError, match="maps are masks, not values"):
        build_method("fastshap", path=str(folder))


@pytest.mark.slow
def test_quickstart_configs_train_and_export_through_the_cli(in_tmp, repo, tiny_digits_args):
    """surrogate.yaml then fastshap.yaml through train.py's CLI (data shrunk): the export records the grid."""
    import json
    import shutil

    from explainer.cli import make_cli

    (in_tmp / "checkpoints" / "quickstart").mkdir(parents=True)
    write_classifier_checkpoint(in_tmp, backbone="digitnet")
    shutil.move(in_tmp / "classifier-10.ckpt", in_tmp / "checkpoints" / "quickstart" / "classifier.ckpt")
    shrink = [*tiny_digits_args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    make_cli(["fit", "--config", str(repo / "configs/quickstart/surrogate.yaml"), *shrink])
    assert (in_tmp / "checkpoints/quickstart/surrogate.ckpt").is_file()
    make_cli(
        ["fit", "--config", str(repo / "configs/quickstart/fastshap.yaml"), *shrink, "--model.init_args.grid", "4"]
    )
    config = json.loads((in_tmp / "checkpoints/quickstart/fastshap/config.json").read_text())
    assert config["mask_net"]["kwargs"]["grid"] == 4 and config["fastshap"]["grid"] == 4
    assert load(in_tmp / "checkpoints/quickstart/fastshap").explain(torch.zeros(1, 3, 32, 32)).shape == (1, 10, 32, 32)
