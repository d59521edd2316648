"""Training settings are typed, coerced and range-checked before any work starts (issue 19 "Configs"), each
method's `method_args` is one validated model whose config fields land in `config.json` (issue 17 "One home
per setting"), and `train.py --help` describes every flag (issue 23). Fast: no training here."""

import pytest
import yaml

import hf_sbir  # noqa: F401  (Auto registration, for init_model)
from hf_sbir.training import TrainConfig, config_from_args
from hf_sbir.training.config import ConfigError, build_arg_parser, settings
from hf_sbir.training.methods import METHODS, get_method_class

from conftest import tiny_sketch_an_anchor_config


def _from_yaml(tmp_path, text: str) -> TrainConfig:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return config_from_args(["--config", str(path)])


# -- TrainConfig: every bad value of the probes is refused with one line naming it -------------------
BAD_VALUES = [
    ("max_grad_norm: -1", "max_grad_norm"),  # accepted before: reversed the gradients
    ("image_size: 1", "image_size"),  # trained before
    ("image_size: 31", "image_size"),  # below the backbones' 32x downsampling
    ("seed: abc", "seed"),  # a numpy error before
    ("max_eval_queries: 0", "max_eval_queries"),  # failed after training, nothing exported
    ("keep_checkpoints: -1", "keep_checkpoints"),  # deleted every checkpoint
    ("keep_checkpoints: 0", "keep_checkpoints"),
    ("min_learning_rate: .nan", "min_learning_rate"),  # NaN weights at iteration 4
    ("learning_rate: .inf", "learning_rate"),
    ("learning_rate: 0", "learning_rate"),
    ("learning_rate: abc", "learning_rate"),
    ("min_learning_rate: 1.0", "min_learning_rate"),  # above learning_rate
    ("iterations: true", "iterations"),  # a boolean is no count
    ("iterations: 2.5", "iterations"),
    ("batch_size: 0", "batch_size"),
    ("warmup_iterations: -1", "warmup_iterations"),
    ("gzs: maybe", "gzs"),
    ("split: sketchy", "split"),
    ("method: sketch-an-anchor", "method"),
    ("mixed_precision: fp8", "mixed_precision"),
    ("log_with: wandbb", "log_with"),
    ("stop_after: 0", "stop_after"),
    ("push_to_hub: true", "hub_model_id"),
    ("iteratons: 3", "did you mean 'iterations'"),
    ("method_args: [1, 2]", "method_args"),
]


@pytest.mark.parametrize("line, culprit", BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_bad_setting_is_refused_with_one_line_naming_it(tmp_path, line, culprit):
    with pytest.raises(ConfigError) as info:
        _from_yaml(tmp_path, line + "\n")
    message = str(info.value)
    assert culprit in message and "\n" not in message
    assert str(tmp_path / "run.yaml") in message or "Unknown" in message  # says where


def test_yaml_strings_are_coerced_the_way_users_mean_them(tmp_path):
    # The premise: PyYAML reads 1e-4 (no dot) as a string, and a quoted "false" is a string.
    assert yaml.safe_load("learning_rate: 1e-4")["learning_rate"] == "1e-4"
    args = _from_yaml(tmp_path, 'learning_rate: 1e-4\nmin_learning_rate: 1e-5\ngzs: "false"\nseed: "3"\n')
    assert args.learning_rate == pytest.approx(1e-4) and isinstance(args.learning_rate, float)
    assert args.gzs is False  # a non-empty string used to turn the generalised protocol on
    assert args.seed == 3


def test_command_line_values_are_validated_too():
    with pytest.raises(ConfigError, match="max_grad_norm"):
        config_from_args(["--max_grad_norm", "-1"])
    args = config_from_args(["--learning_rate", "1e-4", "--split", "null", "--method", "fg_sbir"])
    assert args.learning_rate == pytest.approx(1e-4) and args.split is None
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        config_from_args(["--set", "method_args.x"])


def test_split_null_is_refused_before_work_for_zero_shot_methods(tmp_path):
    for method in ("sketch_an_anchor", "adapt_align"):
        with pytest.raises(ConfigError, match="split is null.*set split to one of"):
            get_method_class(method)(TrainConfig(method=method, split=None)).check()
    get_method_class("fg_sbir")(TrainConfig(method="fg_sbir", split=None)).check()  # instance splits: fine


# -- --help ---------------------------------------------------------------------------------------------
def test_help_describes_every_flag_with_its_choices():
    parser = build_arg_parser()
    flags = {a.dest: a for a in parser._actions if a.dest not in ("help",)}
    for name in settings():
        text = flags[name].help
        assert text and not text.startswith("(default"), name  # a description, not just the default
    text = parser.format_help()
    assert "one of: " + ", ".join(METHODS) in " ".join(text.split())
    assert "one of: no, fp16, bf16" in " ".join(text.split())
    assert "tensorboard" in flags["log_with"].help and "packaged" in flags["backbone"].help
    assert "word_anchor_neighbours" in text and "teacher_iterations" in text  # each method's method_args


# -- method_args: one validated model per method -------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_unknown_method_args_are_refused_with_the_known_list(method):
    settings_class = get_method_class(method).settings_class
    with pytest.raises(ConfigError, match=f"Unknown {method} method_args \\['nope'\\]; known: ") as info:
        settings_class.parse({"nope": 1})
    assert all(key in str(info.value) for key in settings_class.model_fields)


@pytest.mark.parametrize(
    "method, method_args, culprit",
    [
        ("sketch_an_anchor", {"gcn_num_layers": "two"}, "gcn_num_layers"),
        ("adapt_align", {"distillation_domains": "all"}, "distillation_domains must be one of"),
        ("fg_sbir", {"teacher_iterations": -1}, "teacher_iterations"),
        ("fg_sbir", {"on_unmatched": "skip"}, "on_unmatched"),
        ("shape_views", {"num_train_shapes": 0}, "num_train_shapes"),
        ("shape_views", {"styles": ["clean"]}, "styles must be two of"),
    ],
)
def test_bad_method_args_are_refused_with_one_line(method, method_args, culprit):
    with pytest.raises(ConfigError, match=culprit) as info:
        get_method_class(method)(TrainConfig(method=method, split=None, method_args=method_args))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "method, method_args, culprit",
    [
        ("sketch_an_anchor", {"contrastive_temperature": -1}, "contrastive_temperature must be > 0"),
        ("fg_sbir", {"ema_decay": 1.5}, "ema_decay must be in"),
        ("adapt_align", {"adapter_activation": "tanh"}, "adapter_activation must be one of"),
    ],
)
def test_model_config_values_are_checked_by_the_config_class_before_work(method, method_args, culprit):
    split = "embedded" if method != "fg_sbir" else None
    runner = get_method_class(method)(TrainConfig(method=method, split=split, method_args=method_args))
    with pytest.raises(ConfigError, match=culprit):
        runner.check()


def test_shape_views_batch_larger_than_its_views_is_refused_before_work():
    args = TrainConfig(method="shape_views", split=None, batch_size=16, method_args={"num_train_shapes": 2, "views_per_shape": 4})
    with pytest.raises(ConfigError, match="batch_size 16 exceeds the 8 training views"):
        get_method_class("shape_views")(args).check()


def test_num_neighbours_is_the_config_field_the_anchors_use():
    runner = get_method_class("sketch_an_anchor")(TrainConfig(method_args={"num_neighbours": 3}))
    assert runner.model_kwargs == {"word_anchor_neighbours": 3}  # -> config.json, which setup() reads


def test_a_setting_has_one_home():
    cls = get_method_class("sketch_an_anchor")
    with pytest.raises(ConfigError, match="projection_dim is set twice"):
        cls(TrainConfig(model_config={"projection_dim": 8}, method_args={"projection_dim": 16}))
    with pytest.raises(ConfigError, match="Unknown sketch_an_anchor model_config key.*projection_dimm"):
        cls(TrainConfig(model_config={"projection_dimm": 8}))
    # The same value in both places is one setting, not a conflict.
    assert cls(TrainConfig(model_config={"gcn_num_layers": 2}, method_args={"gcn_num_layers": 2})).model_kwargs == {"gcn_num_layers": 2}


# -- init_model: architecture changes refused, the rest re-validated ----------------------------------
@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    from hf_sbir import SketchAnAnchorModel

    folder = tmp_path_factory.mktemp("trained") / "model"
    # word_anchor_dim 384: the packaged MiniLM's, so rebuilding with text_embedder="minilm" changes nothing.
    SketchAnAnchorModel(tiny_sketch_an_anchor_config(gcn_num_layers=2, word_anchor_dim=384)).save_pretrained(folder)
    return folder


def _init_args(folder, **method_args):
    return TrainConfig(init_model=str(folder), text_embedder="minilm", image_size=32, method_args=method_args)


def test_init_model_refuses_architecture_changes(trained_folder):
    runner = get_method_class("sketch_an_anchor")(_init_args(trained_folder, gcn_num_layers=0))
    with pytest.raises(ConfigError, match=r"gcn_num_layers=2 \(asked 0\) would change the trained model's architecture"):
        runner.check()
    with pytest.raises(ConfigError, match="architecture"):
        runner.build_model()  # the same rule where the config is applied


def test_init_model_revalidates_the_changed_config(trained_folder):
    runner = get_method_class("sketch_an_anchor")(_init_args(trained_folder, contrastive_temperature=-1))
    with pytest.raises(ConfigError, match="contrastive_temperature must be > 0"):
        runner.check()


def test_init_model_applies_runtime_changes_to_the_saved_config(trained_folder):
    runner = get_method_class("sketch_an_anchor")(_init_args(trained_folder, contrastive_temperature=0.2, num_neighbours=3))
    runner.check()
    model = runner.build_model()
    assert model.config.contrastive_temperature == 0.2 and model.config.word_anchor_neighbours == 3
    assert model.config.gcn_num_layers == 2 == len(model.anchor_gcn.layers)


def test_init_model_that_does_not_exist_is_one_line(tmp_path):
    runner = get_method_class("sketch_an_anchor")(TrainConfig(init_model=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="init_model folder not found"):
        runner.check()


# -- where the real data is (issue 23 item 7) ------------------------------------------------------
def test_sbir_mini_not_found_names_the_variable_and_each_place_once(tmp_path, monkeypatch):
    import hf_sbir.data.auto as auto

    monkeypatch.setenv("HF_SBIR_MINI_ROOT", str(tmp_path / "nowhere"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    # As installed somewhere without the shared data beside it: from the project root, "../shared" of the
    # working directory and of the checkout are the same folder.
    monkeypatch.setattr(auto, "__file__", str(tmp_path / "work" / "hf_sbir" / "data" / "auto.py"))
    with pytest.raises(FileNotFoundError) as info:
        auto.load_sbir_dataset("sbir-mini")
    message = str(info.value)
    assert "\n" not in message and "export HF_SBIR_MINI_ROOT=" in message and "nowhere" in message
    tried = message.split("Looked in: ", 1)[1].rstrip(".").split(", ")
    assert len(tried) == len(set(tried)) and all(p.startswith("/") and ".." not in p for p in tried)
    assert str(tmp_path / "shared" / "data" / "sbir-mini") in tried  # ../shared, resolved
