"""NeuralArtTask on tiny synthetic images: loss, splits, feature networks, bad input, CLI, image grid."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from l2l_lightning import CheckpointError, ConfigError, CoordinatewiseLSTM, DatasetError, NeuralArtTask
from l2l_lightning.cli import main
from l2l_lightning.compare import compare
from l2l_lightning.meta.baselines import run_baseline
from l2l_lightning.meta.unroll import evaluate_learned
from l2l_lightning.optim.pretrained import load_net
from l2l_lightning.tasks.features import RandomFeatures, VGG19Features

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NUM_IMAGES = 8


def write_image(path: Path, tag: int, size=(24, 20)) -> Path:
    """A smooth random image whose red channel at every pixel is ``tag`` (so crops say which image they are)."""
    g = torch.Generator().manual_seed(tag)
    pixels = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=size[::-1], mode="bilinear")[0]
    pixels = (pixels * 255).round().byte()
    pixels[0] = tag
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "content"
    root.mkdir()
    for i in range(NUM_IMAGES):
        write_image(root / f"img{i}.{'bmp' if i % 2 else 'png'}", 10 * (i + 1))  # lossless: the tags survive
    style = write_image(tmp_path / "style.png", 200, size=(30, 30))
    return root, style


def tiny_task(images, **overrides):
    root, style = images
    kwargs = dict(resolution=16, images_per_draw=2, val_images=2, test_images=2, feature_channels=[8, 16])
    kwargs.update(overrides)
    return NeuralArtTask(str(root), str(style), **kwargs)


def tags(content):
    return set((content[:, 0, 0, 0] * 255).round().long().tolist())


def test_splits_never_share_images_and_draws_stay_in_their_split(images):
    root, _ = images
    (root / "copy_of_img0.png").write_bytes((root / "img0.png").read_bytes())  # same content, other name
    task = tiny_task(images)
    names = task.split_names()
    assert sorted(sum(names.values(), [])) == sorted(p.name for p in root.iterdir())
    assert len(names["test"]) == 2 and len(names["val"]) == 2
    split_of = {name: split for split, files in names.items() for name in files}
    assert split_of["copy_of_img0.png"] == split_of["img0.png"]  # a copy cannot leak across splits
    expected = {split: {10 * (int(n[3:-4]) + 1) for n in files if n.startswith("img")} for split, files in names.items()}
    for split in ("train", "val", "test"):
        seen = set()
        for seed in range(10):
            seen |= tags(task.sample(torch.Generator().manual_seed(seed), split=split).content)
        assert seen <= expected[split] and seen


def test_draws_are_reproducible_and_shaped_as_images(images):
    task = tiny_task(images)
    a, b = (task.sample(torch.Generator().manual_seed(3), split="val") for _ in range(2))
    assert torch.equal(a.initial_params(), b.initial_params()) and torch.equal(a.content, b.content)
    assert a.initial_params().shape == (2 * 3 * 16 * 16,) and a.num_optimizees == 2
    assert a.loss(a.initial_params(), 0).shape == (2,)
    content = tiny_task(images, init="content").sample(torch.Generator().manual_seed(3), split="val")
    torch.testing.assert_close(content.initial_params(), content.content.reshape(-1))
    assert set(a.references()) == {"content", "style"} and a.to_images(a.initial_params()).shape == (2, 3, 16, 16)


def test_each_optimizee_gets_its_own_gradient(images):
    problem = tiny_task(images).sample(torch.Generator().manual_seed(0))
    theta = problem.initial_params().requires_grad_(True)
    losses = problem.loss(theta, 0)
    (grad0,) = torch.autograd.grad(losses[0], theta)
    assert grad0[: grad0.numel() // 2].abs().sum() > 0 and grad0[grad0.numel() // 2 :].abs().sum() == 0


def test_loss_decreases_under_adam_and_under_the_shipped_learned_optimizer(images):
    # The shipped optimizer knows the loss scale of its training task (style_weight 10): it is
    # not scale-free, so the tiny task keeps that weight (with 10× more, it barely moves).
    task = tiny_task(images, style_weight=10.0)
    problem = task.sample(torch.Generator().manual_seed(0), split="test")
    start = problem.loss(problem.initial_params(), 0)
    adam = run_baseline("adam", 0.05, problem, 30)
    learned = evaluate_learned(load_net("neural_art"), problem, 30)
    assert (adam[-1] < 0.5 * start).all(), (start, adam[-1])
    assert (learned[-1] < 0.5 * start).all(), (start, learned[-1])


def test_random_feature_network_is_deterministic_from_its_seed():
    x = torch.rand(2, 3, 16, 16)
    a, b, c = RandomFeatures([4, 8], seed=5), RandomFeatures([4, 8], seed=5), RandomFeatures([4, 8], seed=6)
    torch.manual_seed(123)  # the global generator plays no part
    for (name, pa), (_, pb), (_, pc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert torch.equal(pa, pb)
        if name.endswith("weight"):
            assert not torch.equal(pa, pc)
    assert torch.equal(a(x, ["relu2"])["relu2"], b(x, ["relu2"])["relu2"])
    assert a.names == ["conv1", "relu1", "pool1", "conv2", "relu2"]


def test_vgg19_runs_on_the_same_code_with_random_weights(images):
    task = tiny_task(images, resolution=32, feature_net="vgg19", vgg_weights="random", images_per_draw=1)
    root, _ = images
    for i in range(NUM_IMAGES):  # VGG-19 pools five times: give it 32×32 images
        write_image(root / f"img{i}.{'bmp' if i % 2 else 'png'}", 10 * (i + 1), size=(40, 36))
    write_image(Path(task.style_image), 200, size=(40, 40))
    problem = task.sample(torch.Generator().manual_seed(0))
    theta = problem.initial_params().requires_grad_(True)
    (grad,) = torch.autograd.grad(problem.loss(theta, 0).sum(), theta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert "relu4_2" in problem.net.names and "pool5" in problem.net.names


def test_vgg_weights_missing_or_of_the_wrong_architecture(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.pth.*download: true"):
        VGG19Features(str(tmp_path / "nowhere.pth"))
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(CheckpointError, match="resnet.pth is not a torchvision vgg19"):
        VGG19Features(str(wrong))
    with pytest.raises(ConfigError, match="vgg_weights"):
        VGG19Features(None)
    with pytest.raises(ConfigError, match="feature_net='vgg19' needs vgg_weights"):
        NeuralArtTask(str(tmp_path), str(tmp_path / "style.png"), feature_net="vgg19")


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("missing", DatasetError, "does not exist"),
        ("empty", DatasetError, "holds no images"),
        ("unreadable", DatasetError, "broken.png cannot be read as an image"),
        ("small_style", DatasetError, "style.png is 8×8, smaller than the resolution 16"),
        ("too_few", ConfigError, "leave none for training"),
        ("unknown_layer", ConfigError, "style_layers.*relu9"),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_file(images, tmp_path, case, error, message):
    root, style = images
    kwargs = dict(content_root=str(root), style_image=str(style), resolution=16, feature_channels=[4, 8],
                  val_images=2, test_images=2)  # fmt: skip
    if case == "missing":
        kwargs["content_root"] = str(tmp_path / "nowhere")
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        kwargs["content_root"] = str(tmp_path / "empty")
    elif case == "unreadable":
        (root / "broken.png").write_bytes(b"not an image")
    elif case == "small_style":
        write_image(style, 200, size=(8, 8))
    elif case == "too_few":
        kwargs["test_images"] = NUM_IMAGES
    elif case == "unknown_layer":
        kwargs["style_layers"] = ["relu1", "relu9"]
    with pytest.raises(error, match=message):
        NeuralArtTask(**kwargs).sample(torch.Generator().manual_seed(0))


def test_compare_writes_the_image_grid(images, tmp_path):
    results = compare(
        ["neural_art"], tiny_task(images), num_steps=5, num_problems=2, baselines=["adam"], lrs=[0.01, 0.1],
        tune_problems=1, out_dir=str(tmp_path / "out"), progress=False, image_grid=3,
    )  # fmt: skip
    assert [r.name for r in results] == ["neural_art", "adam"]
    grid = Image.open(tmp_path / "out" / "images.png")
    assert grid.size[0] > grid.size[1] > 100  # 3 rows × (content, style, learned, adam)


def cli_args(images, tmp_path):
    root, style = images
    return [
        "fit", "--config", str(CONFIGS / "neural_art.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
        "--model.task.init_args.content_root", str(root), "--model.task.init_args.style_image", str(style),
        "--model.task.init_args.content_files", "null", "--model.task.init_args.resolution", "16",
        "--model.task.init_args.val_images", "2", "--model.task.init_args.test_images", "2",
        "--model.task.init_args.feature_channels", "[4, 8]",
        "--model.task.init_args.style_layers", "[relu1, relu2]", "--model.task.init_args.content_layers", "[relu2]",
        "--model.num_steps", "4", "--model.unroll", "2", "--model.truncations_per_epoch", "2",
        "--model.val_problems", "1", "--model.test_problems", "1", "--model.baseline_lrs", "[0.01, 0.1]",
    ]  # fmt: skip


@pytest.mark.slow
def test_fit_from_the_config_with_tiny_overrides_logs_the_optimizee_images(images, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main(cli_args(images, tmp_path))
    version = tmp_path / "runs" / "neural_art" / "version_0"
    assert list((version / "checkpoints").glob("best-*.ckpt"))
    events = EventAccumulator(str(version), size_guidance={"images": 0}).Reload()
    assert "val/optimizee_images" in events.Tags()["images"]
    image = events.Images("val/optimizee_images")[-1]
    assert (image.width, image.height) == (4 * 16, 2 * 16)  # content | style | learned | adam, one row per image


def test_a_missing_image_folder_is_one_line_in_the_cli(images, tmp_path, capsys):
    args = cli_args(images, tmp_path)
    args[args.index("--model.task.init_args.content_root") + 1] = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[-1].startswith("l2l: error: image folder") and "nowhere does not exist" in err[-1]


def test_the_example_stylizes_a_photo_with_the_shipped_optimizer(images, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "stylize_image.py"
    spec = importlib.util.spec_from_file_location("stylize_image", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    root, style = images
    out = tmp_path / "stylized.png"
    example.main([str(root / "img0.png"), "--out", str(out), "--steps", "30", "--resolution", "16", "--style", str(style)])
    assert Image.open(out).size == (16, 16)
    _, losses = example.stylize(root / "img0.png", steps=30, resolution=16, style=str(style))
    assert len(losses) == 31 and losses[-1] < 0.5 * losses[0], losses[::10]
    torch.manual_seed(123)  # whatever the caller's global state, a rerun is the same run
    _, again = example.stylize(root / "img0.png", steps=30, resolution=16, style=str(style))
    assert again == losses
