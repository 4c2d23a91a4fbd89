"""Rewarded soups are exact on ΔW (λ = 1 is θ_U, λ = 0 is θ_G); the oracle routes calls by task."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_world_fixtures import lora_model, random_pairs

from unigap.cli import main
from unigap.errors import UserError
from unigap.model import load_model
from unigap.train.merge import delta_weights, soup
from unigap.train.oracle import SeparateLoraOracle

HEAD = "generation_head"


def _adapter(tiny_dir: Path, out: Path, seed: int, rank: int) -> Path:
    um = load_model(tiny_dir)
    um.add_lora(rank=rank, alpha=2 * rank + seed, dropout=0.0)  # different ranks and scalings
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in um.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return um.save_adapter(out)


@pytest.fixture(scope="module")
def adapters(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return _adapter(tiny_dir, root / "und", 1, 4), _adapter(tiny_dir, root / "gen", 2, 2)


def _head(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(directory / "adapter_model.safetensors")).items() if HEAD in k}


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_soup_is_exact_on_delta_w(adapters: tuple[Path, Path], tmp_path: Path, lam: float) -> None:
    und, gen = adapters
    merged = soup(und, gen, lam, tmp_path)
    d_u, d_g, d_s = delta_weights(und), delta_weights(gen), delta_weights(merged)
    assert d_s.keys() == d_u.keys() and d_u
    for key in d_u:
        torch.testing.assert_close(d_s[key], lam * d_u[key] + (1 - lam) * d_g[key], rtol=1e-5, atol=1e-7)
    h_u, h_g, h_s = _head(und), _head(gen), _head(merged)
    assert h_s.keys() == h_u.keys() and h_u
    for key in h_u:
        torch.testing.assert_close(h_s[key], lam * h_u[key] + (1 - lam) * h_g[key])
    assert json.loads((merged / "adapter_config.json").read_text())["r"] == 6


def test_delta_weights_is_what_peft_applies(tiny_dir: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    """The soup loads as an ordinary adapter, and each LoRA layer adds exactly x·ΔWᵀ to its base layer."""
    merged = soup(*adapters, 0.5, tmp_path)
    um = load_model(tiny_dir)
    um.load_adapter(merged)
    deltas = delta_weights(merged)
    modules = dict(um.peft.named_modules())
    key = next(iter(deltas))
    layer = modules[key]
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - layer.base_layer(x), x @ deltas[key].T, rtol=1e-4, atol=1e-5)


def test_soup_refuses_mismatched_adapters(adapters: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no PEFT adapter"):
        soup(adapters[0], tmp_path, 0.5, tmp_path / "out")
    with pytest.raises(UserError, match="λ must lie"):
        soup(*adapters, 1.5, tmp_path / "out")
    wrong = tmp_path / "wrong-rank"  # a config that disagrees with its weights: the soup could not be loaded
    wrong.mkdir()
    (wrong / "adapter_model.safetensors").write_bytes((adapters[1] / "adapter_model.safetensors").read_bytes())
    config = json.loads((adapters[1] / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps(config | {"r": config["r"] * 8}))
    with pytest.raises(UserError, match=rf"wrong-rank: its weights have rank {config['r']} but adapter_config.json "
                                        rf"says r = {config['r'] * 8}"):
        soup(adapters[0], wrong, 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    key = next(k for k in load_file(str(adapters[1] / "adapter_model.safetensors")) if k.endswith(".lora_B.weight"))
    for name, extra in (("bias", {key.replace(".weight", ".bias"): torch.zeros(4)}),  # PEFT's lora_bias=True
                        ("embedding", {key.replace("lora_B.weight", "lora_embedding_A"): torch.zeros(config["r"], 4)})):
        both = [_copy(adapter, tmp_path / f"{name}{i}", tensors=extra) for i, adapter in enumerate(adapters)]
        with pytest.raises(UserError, match=rf"{name}0: only plain LoRA adapters \(factors of linear layers\) can be "
                                            rf"souped; it holds {re.escape(next(iter(extra)))}"):
            soup(*both, 0.5, tmp_path / "out")  # (mixed as if trained in full: an exact soup's cross terms back)
    assert not (tmp_path / "out").exists()


def _copy(adapter: Path, to: Path, config: object = None, tensors: dict | None = None) -> Path:
    """`adapter` in `to`, its config (a dict, or the file's raw text) and tensors replaced where given."""
    from safetensors.torch import save_file

    to.mkdir()
    weights = load_file(str(adapter / "adapter_model.safetensors")) | (tensors or {})
    save_file(weights, str(to / "adapter_model.safetensors"))
    text = (adapter / "adapter_config.json").read_text()
    (to / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(
        json.loads(text) if config is None else config))
    return to


def test_a_malformed_config_or_another_bases_adapter_is_one_line_and_writes_nothing(adapters: tuple[Path, Path],
                                                                                    tmp_path: Path) -> None:
    """A config that is no JSON object raised a traceback; one without lora_alpha (peft's default, 8) a KeyError
    after the soup's folder was made; an adapter of a base of another size, torch's concatenation error."""
    und, gen = adapters
    config = json.loads((gen / "adapter_config.json").read_text())
    refused = {'{"r": 4,': "cannot read .*adapter_config.json", "[]": "must hold a JSON object, got list",
               json.dumps(config | {"lora_alpha": "x"}): "lora_alpha must be a number, got 'x'",
               json.dumps(config | {"base_model_name_or_path": "/elsewhere"}):
               rf"different bases or shapes: base_model_name_or_path '{re.escape(config['base_model_name_or_path'])}' "
               "and "
               "'/elsewhere'"}
    for i, (text, message) in enumerate(refused.items()):
        with pytest.raises(UserError, match=message):
            soup(und, _copy(gen, tmp_path / f"bad{i}", text), 0.5, tmp_path / "out")
    key = next(k for k in load_file(str(gen / "adapter_model.safetensors")) if k.endswith(".lora_A.weight"))
    other = _copy(gen, tmp_path / "other-base", tensors={key: torch.zeros(config["r"], 3)})
    with pytest.raises(UserError, match=rf"different bases or shapes: {re.escape(key)} \({config['r']}, 3\) and"):
        soup(other, und, 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    import os

    relative = os.path.relpath(config["base_model_name_or_path"])  # (the same base, trained from another folder)
    assert soup(und, _copy(gen, tmp_path / "relative", config | {"base_model_name_or_path": relative}), 0.5,
                tmp_path / "out-relative").is_dir()
    unsaid = _copy(gen, tmp_path / "no-alpha", {k: v for k, v in config.items() if k != "lora_alpha"})
    alone = soup(und, unsaid, 0.0, tmp_path / "out")  # λ = 0: that adapter alone, at peft's scaling 8 / r
    for name, delta in delta_weights(alone).items():
        torch.testing.assert_close(delta, delta_weights(gen)[name] * 8 / config["lora_alpha"], rtol=1e-5, atol=1e-7)


def test_merge_cli_writes_one_soup_per_lambda(adapters: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["merge", "--und", str(adapters[0]), "--gen", str(adapters[1]), "--out", str(tmp_path)])
    assert exc.value.code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "soup-0.3", "soup-0.5", "soup-0.7"]
    assert capsys.readouterr().out.split() == [str(tmp_path / f"soup-{lam}") for lam in ("0.3", "0.5", "0.7")]
    with pytest.raises(SystemExit) as exc:  # (a training run's adapter was written beside the soups, exit 0)
        main(["train", "--model", "tiny", "--objective", "und-sft", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "holds the output of `unigap merge`" in capsys.readouterr().err
    written = (tmp_path / "soup-0.7" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exc:  # a second run into the same --out never writes over a soup
        main(["merge", "--und", str(adapters[0]), "--gen", str(adapters[1]), "--out", str(tmp_path), "--lambda", "0.1",
              "--lambda", "0.7"])
    assert exc.value.code == 2 and f"--out {tmp_path} already holds soup-0.7;" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # nor adds soups of other adapters (its record named them for all)
        main(["merge", "--und", str(adapters[1]), "--gen", str(adapters[0]), "--out", str(tmp_path), "--lambda", "0.1"])
    assert exc.value.code == 2 and f"--out {tmp_path} holds soups of other adapters (--und {adapters[0]} --gen " \
        f"{adapters[1]})" in capsys.readouterr().err
    picture = tmp_path.parent / f"{tmp_path.name}-picture.png"
    picture.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:  # not an adapter: said so, not that the soups were of others
        main(["merge", "--und", str(adapters[0]), "--gen", str(picture), "--out", str(tmp_path), "--lambda", "0.1"])
    assert exc.value.code == 2 and f"{picture} holds no PEFT adapter" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # the same adapters' soup at another λ joins them
        main(["merge", "--und", str(adapters[0]), "--gen", str(adapters[1]), "--out", str(tmp_path), "--lambda", "0.1"])
    assert exc.value.code == 0 and (tmp_path / "soup-0.1").is_dir()
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["lambdas"] == [0.3, 0.5, 0.7, 0.1]
    shutil.rmtree(tmp_path / "soup-0.1")  # (the listing below is the earlier soups')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "soup-0.3", "soup-0.5", "soup-0.7"]
    assert (tmp_path / "soup-0.7" / "adapter_model.safetensors").read_bytes() == written
    for lambdas, message, gen in ((["0.2", "0.2"], "name the same soup twice", adapters[1]),
                                  (["-0", "0"], "name the same soup twice", adapters[1]),  # (soup--0 and soup-0)
                                  (["0.2", "1.5"], "must lie in \\[0, 1\\]", adapters[1]),
                                  (["0.2"], "--und and --gen are the same adapter", adapters[0])):
        with pytest.raises(SystemExit) as exc:
            main(["merge", "--und", str(adapters[0]), "--gen", str(gen), "--out", str(tmp_path / "new"),
                  *(arg for lam in lambdas for arg in ("--lambda", lam))])
        assert exc.value.code == 2
        assert re.search(message, capsys.readouterr().err) and not (tmp_path / "new").exists()


def test_a_soup_cut_off_while_written_leaves_no_folder(adapters: tuple[Path, Path], tmp_path: Path,
                                                       monkeypatch) -> None:
    """A kill (or a full disk) between a soup's weights and its config left a folder a rerun refused as taken."""
    import unigap.train.merge as merge_module

    real, written = merge_module.atomic_write_bytes, []

    def cut_off(path, write):
        if path.name == merge_module.ADAPTER_CONFIG:
            raise KeyboardInterrupt
        written.append(path.name)
        real(path, write)

    monkeypatch.setattr(merge_module, "atomic_write_bytes", cut_off)
    with pytest.raises(KeyboardInterrupt):
        merge_module.soups(*adapters, tmp_path / "out", (0.5,))
    assert written == [merge_module.ADAPTER_WEIGHTS] and list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(merge_module, "atomic_write_bytes", real)
    assert merge_module.soups(*adapters, tmp_path / "out", (0.5,)) == [tmp_path / "out" / "soup-0.5"]


def test_oracle_routes_understanding_and_generation(tiny_dir: Path, adapters: tuple[Path, Path]) -> None:
    und, gen = adapters
    u_pairs, g_pairs = random_pairs(lora_model(tiny_dir), 2)
    images, questions, answers = (
        [p.image for p in u_pairs],
        [p.question for p in u_pairs],
        [p.chosen for p in u_pairs],
    )
    prompts, tokens = [p.prompt for p in g_pairs], torch.tensor([p.chosen for p in g_pairs])

    def scores(um) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return um.answer_logprobs(images, questions, answers)[0], um.image_logprobs(prompts, tokens)[0]

    single = {}
    for name, directory in (("und", und), ("gen", gen)):
        um = load_model(tiny_dir)
        um.load_adapter(directory)
        single[name] = scores(um)
    oracle = SeparateLoraOracle(load_model(tiny_dir), und, gen)
    answer_lp, image_lp = scores(oracle)
    torch.testing.assert_close(answer_lp, single["und"][0])
    torch.testing.assert_close(image_lp, single["gen"][1])
    assert not torch.allclose(single["und"][1], single["gen"][1])  # the routing is visible
    assert oracle.num_image_tokens == 64
    with torch.no_grad():  # (image_token_logprobs, edit and edit_token_logprobs ran under the und adapter)
        torch.testing.assert_close(oracle.image_token_logprobs(prompts, tokens).sum(-1), single["gen"][1])


def test_the_oracle_routes_every_method_of_the_model_that_runs_the_llm() -> None:
    """A method missing from both routing sets runs under the und adapter whatever its task."""
    import inspect

    from unigap.model.unified import UnifiedModel
    from unigap.train.oracle import GENERATION_CALLS, UNDERSTANDING_CALLS, UNROUTED_CALLS

    methods = {name for name, value in vars(UnifiedModel).items() if inspect.isfunction(value) and name[0] != "_"}
    assert methods == UNDERSTANDING_CALLS | GENERATION_CALLS | UNROUTED_CALLS
    assert not UNDERSTANDING_CALLS & GENERATION_CALLS


def test_soups_added_to_a_folder_are_matched_by_content_not_by_how_a_path_was_typed(
        adapters: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    """The manifest kept --und/--gen as typed: the same adapters typed from another folder were refused, and others
    typed alike from another folder were added (the record naming one pair for soups of two)."""
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        for side, adapter in zip(("und", "gen"), adapters, strict=True):
            shutil.copytree(adapter, tmp_path / run / side)
    (tmp_path / "b" / "gen" / "adapter_config.json").write_text(  # (b's gen adapter: other content)
        (tmp_path / "b" / "gen" / "adapter_config.json").read_text().replace("{", '{"revision": null, ', 1))
    soups = tmp_path / "soups"
    monkeypatch.chdir(tmp_path / "a")
    assert main_code(["merge", "--und", "und", "--gen", "gen", "--out", str(soups), "--lambda", "0.5"]) == 0
    monkeypatch.chdir(tmp_path)  # the same adapters, typed from elsewhere: added
    assert main_code(["merge", "--und", "a/und", "--gen", "a/gen", "--out", str(soups), "--lambda", "0.3"]) == 0
    monkeypatch.chdir(tmp_path / "b")  # others typed alike: refused
    assert main_code(["merge", "--und", "und", "--gen", "gen", "--out", str(soups), "--lambda", "0.7"]) == 2
    assert "holds soups of other adapters" in capsys.readouterr().err and not (soups / "soup-0.7").exists()


def main_code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def test_a_soup_records_its_adapters_base_so_other_weights_are_warned_of(adapters: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """A soup applied to a model with one of its adapters folded in already applied that adapter again (λ more of
    it) without the warning the adapter itself gets; adapters of two bases are not souped."""
    from unigap.cli.common import _warn_other_base
    from unigap.errors import UnigapWarning
    from unigap.train.merge import soups

    copies = [shutil.copytree(a, tmp_path / a.name) for a in adapters]
    for copy in copies:
        (copy / "inputs.json").write_text(json.dumps({"model_weights": "sha256:folded", "seed": 0}))
    (made,) = soups(*copies, tmp_path / "soups", (0.5,))
    assert json.loads((made / "inputs.json").read_text()) == {"model_weights": "sha256:folded"}
    with pytest.warns(UnigapWarning, match="was trained on other base weights"):
        _warn_other_base("tiny", made)
    (copies[1] / "inputs.json").write_text(json.dumps({"model_weights": "sha256:other"}))
    with pytest.raises(UserError, match="trained on different base weights"):
        soups(*copies, tmp_path / "more", (0.5,))
    assert not (tmp_path / "more").exists()
    (made,) = soups(*adapters, tmp_path / "plain", (0.5,))  # (adapters of no record: a soup of none)
    assert not (made / "inputs.json").exists()
    soup(*copies[:1], copies[0], 0.5, tmp_path / "again")  # (one base) then rewritten in place from no record:
    soup(*adapters, 0.5, tmp_path / "again")  # the earlier record is not left to warn of the wrong base
    assert not (tmp_path / "again" / "inputs.json").exists()
