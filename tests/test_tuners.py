"""Every non-LoRA PEFT kind read as tuned weights, against PEFT's own merge_and_unload on tiny real
models: AdaLoRA, LoHa, LoKr, OFT, BOFT, IA³, VeRA, FourierFT, and kinds spectui does not special-case
through PEFT's layer code. Then the CLI on them, hostile configs, and mitigation's merged output."""

import copy
import json
import shutil

import pytest
import torch
from models import tiny_gpt2, tiny_llama
from naive import naive_intruders
from safetensors.torch import load_file, save_file

from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison
from spectui.checkpoint.pairing import load_matrix
from spectui.engine import Scan
from spectui.mitigate import plan, scale_intruders
from spectui.results import ScanResults

LLAMA = ["q_proj", "v_proj", "down_proj", "up_proj"]
GPT2 = ["c_attn", "c_proj", "c_fc"]

# case → (base, PEFT config class, its arguments)
CASES = {
    "adalora": ("llama", "AdaLoraConfig", dict(init_r=6, target_r=4, total_step=10, lora_alpha=5,
                                               target_modules=LLAMA)),
    "adalora-gpt2": ("gpt2", "AdaLoraConfig", dict(init_r=4, target_r=2, total_step=5, target_modules=GPT2,
                                                   fan_in_fan_out=True)),
    "loha": ("llama", "LoHaConfig", dict(r=4, alpha=8, target_modules=LLAMA, rank_pattern={"v_proj": 2},
                                         alpha_pattern={"layers.1.mlp.down_proj": 3})),
    "lokr": ("llama", "LoKrConfig", dict(r=2, alpha=8, target_modules=LLAMA, alpha_pattern={"q_proj": 5})),
    "lokr-decompose-both": ("llama", "LoKrConfig", dict(r=1, alpha=3, decompose_both=True, target_modules=LLAMA)),
    "oft": ("llama", "OFTConfig", dict(r=4, oft_block_size=0, target_modules=LLAMA)),
    "oft-coft-shared": ("llama", "OFTConfig", dict(r=0, oft_block_size=8, coft=True, eps=0.1, block_share=True,
                                                   target_modules=LLAMA)),
    "oft-cayley-embedding": ("llama", "OFTConfig", dict(r=0, oft_block_size=8, use_cayley_neumann=False,
                                                        target_modules=[*LLAMA, "embed_tokens"])),
    "boft": ("llama", "BOFTConfig", dict(boft_block_size=4, boft_n_butterfly_factor=1, target_modules=LLAMA)),
    "ia3": ("llama", "IA3Config", dict(target_modules=LLAMA, feedforward_modules=["down_proj"])),
    "ia3-gpt2": ("gpt2", "IA3Config", dict(target_modules=["c_attn", "attn.c_proj", "mlp.c_proj", "c_fc"],
                                           feedforward_modules=["mlp.c_proj"],
                                           fan_in_fan_out=True)),
    "vera": ("llama", "VeraConfig", dict(r=8, target_modules=LLAMA)),
    "vera-regenerated": ("llama", "VeraConfig", dict(r=8, target_modules=LLAMA, save_projection=False,
                                                     projection_prng_key=7)),
    "vera-gpt2": ("gpt2", "VeraConfig", dict(r=4, target_modules=GPT2, fan_in_fan_out=True)),
    "fourierft": ("llama", "FourierFTConfig", dict(n_frequency=50, target_modules=LLAMA,
                                                   n_frequency_pattern={"v_proj": 20})),
    "fourierft-gpt2": ("gpt2", "FourierFTConfig", dict(n_frequency=40, target_modules=GPT2, fan_in_fan_out=True)),
    # not special-cased: PEFT's own layer code, one module at a time
    "general-hra": ("llama", "HRAConfig", dict(r=4, target_modules=LLAMA)),
    "general-randlora": ("llama", "RandLoraConfig", dict(r=8, target_modules=LLAMA)),  # shared projections
    "general-tinylora": ("llama", "TinyLoraConfig", dict(target_modules=LLAMA)),  # layers numbered in model order
}
WITH_FACTORS = {"adalora", "adalora-gpt2", "loha", "lokr", "lokr-decompose-both", "vera", "vera-regenerated",
                "vera-gpt2"}
DESCRIPTIONS = {"adalora": "AdaLoRA budget 6→4", "loha": "LoHa r=4 α=8", "lokr": "LoKr r=2 α=8", "oft": "OFT r=4",
                "boft": "BOFT b=4 m=1", "ia3": "IA³", "vera": "VeRA r=8", "fourierft": "FourierFT n=50",
                "general-hra": "HRA r=4", "general-randlora": "RANDLORA r=8"}


def peft_config(name: str, **kwargs):
    import peft

    if not hasattr(peft, name):
        pytest.skip(f"this PEFT has no {name}")
    return getattr(peft, name)(**kwargs)


def trained(base, config, seed: int = 3):
    """A PEFT model whose trainable tensors are random and non-zero, as after training (scales and
    vectors that multiply the weights around 1)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and p.is_floating_point():
                multiplies = "ia3_l" in name or "boft_s" in name
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if multiplies else 0.0))
    return model


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuner-bases")
    made = {"llama": tiny_llama(), "gpt2": tiny_gpt2()}
    for name, model in made.items():
        model.save_pretrained(root / name)
    return {name: (model, root / name) for name, model in made.items()}


_ADAPTERS = {}


@pytest.fixture
def adapter(bases, tmp_path_factory):
    """case → (PEFT model, base dir, saved adapter dir), built once per session."""

    def make(case: str):
        if case not in _ADAPTERS:
            base_name, config_name, kwargs = CASES[case]
            base, base_dir = bases[base_name]
            model = trained(base, peft_config(config_name, **kwargs))
            path = tmp_path_factory.mktemp("tuners") / case
            model.save_pretrained(path)
            _ADAPTERS[case] = (model, base_dir, path)
        return _ADAPTERS[case]

    return make


def peft_merged(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """PEFT's merge of the saved adapter, loaded as a user would load it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().state_dict()


@pytest.mark.parametrize("case", list(CASES))
def test_tuned_weights_equal_peft_merge_and_unload(case, adapter):
    model, base_dir, path = adapter(case)
    in_memory = copy.deepcopy(model).merge_and_unload().state_dict()
    reloaded = peft_merged(base_dir, path)
    comparison = open_comparison(str(base_dir), [str(path)], include_embeddings=True)
    tuned = comparison.tuned[0]
    scanned = {spec.name for spec in tuned.pairing.matrices}
    odd = [s for s in tuned.pairing.skipped if "adapter" not in s.reason and "D tensor" not in s.reason]
    assert scanned and not odd, odd
    for name in comparison.base.names():  # every tensor: the changed ones, biases, and the untouched
        ours = tuned.source.load(name).float()
        torch.testing.assert_close(ours, in_memory[name].float(), rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(ours, reloaded[name].float(), rtol=1e-5, atol=1e-5, msg=name)
        if not torch.equal(in_memory[name], comparison.base.load(name)):
            assert tuned.source.changes(name), name
    assert {n for n in scanned if not torch.equal(in_memory[n], comparison.base.load(n))} == scanned


@pytest.mark.parametrize("case", sorted(WITH_FACTORS))
def test_low_rank_factors_reproduce_delta(case, adapter):
    _, base_dir, path = adapter(case)
    comparison = open_comparison(str(base_dir), [str(path)])
    tuned = comparison.tuned[0]
    for spec in tuned.pairing.matrices:
        factors = tuned.source.delta_factors(spec)
        assert factors is not None, spec.name
        b, a = factors
        assert b.shape[1] < min(spec.shape)  # cheaper than ΔW itself
        delta = load_matrix(tuned.source, spec.tuned_name, spec) - load_matrix(comparison.base, spec.name, spec)
        torch.testing.assert_close(b @ a, delta, rtol=1e-4, atol=1e-5, msg=spec.name)


def test_multiplicative_and_dense_kinds_keep_no_factors(adapter):
    for case in ("oft", "boft", "ia3", "fourierft", "general-hra"):
        _, base_dir, path = adapter(case)
        tuned = open_comparison(str(base_dir), [str(path)]).tuned[0]
        assert all(tuned.source.delta_factors(spec) is None for spec in tuned.pairing.matrices), case


def test_adalora_budget_keeps_the_ranks_its_rank_pattern_chose(bases, tmp_path):
    """A real budget run: PEFT's RankAllocator masks ranks, saves only the kept ones, and records
    which in rank_pattern; ranknum (not saved) stays init_r."""
    base, base_dir = bases["llama"]
    model = trained(base, peft_config("AdaLoraConfig", init_r=6, target_r=2, total_step=10, tinit=1, tfinal=3,
                                      deltaT=1, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"]))
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    for step in range(10):
        model(input_ids=ids, labels=ids).loss.backward()
        model.base_model.update_and_allocate(step)
        model.zero_grad()
    model.save_pretrained(tmp_path / "adalora")
    pattern = json.loads((tmp_path / "adalora" / "adapter_config.json").read_text())["rank_pattern"]
    kept = sorted(sum(mask) for mask in pattern.values())
    assert kept[0] < 6 and sum(kept) == 2 * len(kept)  # the budget: target_r on average
    reference = peft_merged(base_dir, tmp_path / "adalora")
    tuned = open_comparison(str(base_dir), [str(tmp_path / "adalora")]).tuned[0]
    assert tuned.description == "AdaLoRA budget 6→2"
    for spec in tuned.pairing.matrices:
        torch.testing.assert_close(tuned.source.load(spec.name), reference[spec.name], rtol=1e-5, atol=1e-5)
        b, a = tuned.source.delta_factors(spec)
        assert b.shape[1] in kept


def test_boft_with_several_butterfly_factors(bases, tmp_path, monkeypatch):
    """PEFT uses m > 1 butterfly factors only with its CUDA extension; a stand-in extension (its
    block-diagonal in plain torch) lets PEFT train and merge such an adapter here."""
    import peft.tuners.boft.layer as boft_layer

    class BlockDiagonal:
        @staticmethod
        def forward(x):
            return [torch.stack([torch.block_diag(*x[i]) for i in range(x.shape[0])])]

    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: BlockDiagonal)
    base, base_dir = bases["llama"]
    for name, kwargs in {"size": dict(boft_block_size=4, boft_n_butterfly_factor=2),
                         "number": dict(boft_block_size=0, boft_block_num=8, boft_n_butterfly_factor=3)}.items():
        model = trained(base, peft_config("BOFTConfig", target_modules=["q_proj", "v_proj", "up_proj"], **kwargs))
        model.save_pretrained(tmp_path / name)
        reference = peft_merged(base_dir, tmp_path / name)
        tuned = open_comparison(str(base_dir), [str(tmp_path / name)]).tuned[0]
        assert tuned.description.endswith(f"m={kwargs['boft_n_butterfly_factor']}")
        for spec in tuned.pairing.matrices:
            torch.testing.assert_close(tuned.source.load(spec.name), reference[spec.name], rtol=1e-5, atol=1e-5)


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(DESCRIPTIONS))
def test_scan_names_the_method_and_counts_as_the_naive_algorithm(cli, case, adapter):
    model, base_dir, path = adapter(case)
    code, out, err = cli("scan", base_dir, path, "--json", "--no-cache")
    assert code == 0, err
    data = json.loads(out)
    assert data["description"].startswith(DESCRIPTIONS[case])
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    base = load_file(base_dir / "model.safetensors")
    assert data["matrices"]
    for m in data["matrices"]:
        assert m["intruder_ranks"] == naive_intruders(base[m["name"]], merged[m["name"]]), m["name"]


def test_an_adapter_that_changes_no_weight_is_refused(cli, adapter, tmp_path):
    _, base_dir, path = adapter("ia3")
    for peft_type, phrase in {"PROMPT_TUNING": "changes no weight", "NOT_A_KIND": "not a kind of adapter PEFT knows",
                              7: "peft_type must be a string"}.items():
        changed = with_config(path, tmp_path, peft_type=peft_type)
        code, out, err = cli("scan", base_dir, changed, "--no-cache")
        assert code == 2 and out == "" and err.strip().count("\n") == 0 and phrase in err, err


def test_general_path_skips_a_module_peft_cannot_build_and_says_why(cli, bases, tmp_path):
    """C3A needs its block size to divide the layer's input size: a module where it does not is
    skipped with PEFT's reason; the others are PEFT's merge."""
    base, base_dir = bases["llama"]
    model = trained(base, peft_config("C3AConfig", block_size=16, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "c3a")
    reference = peft_merged(base_dir, tmp_path / "c3a")
    tensors = load_file(tmp_path / "c3a" / "adapter_model.safetensors")
    q = "base_model.model.model.layers.0.self_attn.q_proj.c3a_kernel"
    tensors[q.replace("self_attn.q_proj", "mlp.down_proj")] = tensors[q].clone()  # in = 72: no 16-wide blocks
    save_file(tensors, tmp_path / "c3a" / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "c3a" / "adapter_config.json").read_text())
    (tmp_path / "c3a" / "adapter_config.json").write_text(json.dumps({**config,
                                                                       "target_modules": ["q_proj", "down_proj"]}))
    code, out, err = cli("scan", base_dir, tmp_path / "c3a", "--json", "--no-cache")
    assert code == 0, err
    data = json.loads(out)
    skipped = {s["name"]: s["reason"] for s in data["skipped"]}
    assert "PEFT cannot build its C3A layer here" in skipped["model.layers.0.mlp.down_proj.weight"]
    assert {m["name"] for m in data["matrices"]} == {f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 1)}
    tuned = open_comparison(str(base_dir), [str(tmp_path / "c3a")]).tuned[0]
    for spec in tuned.pairing.matrices:
        torch.testing.assert_close(tuned.source.load(spec.name), reference[spec.name], rtol=1e-5, atol=1e-5)


# -- hostile configs and tensors -------------------------------------------------------------------


def with_config(adapter_dir, tmp, **changes):
    out = tmp / f"changed-{len(list(tmp.iterdir()))}"
    shutil.copytree(adapter_dir, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not ...}))
    return out


def with_tensors(adapter_dir, tmp, change):
    out = with_config(adapter_dir, tmp)
    tensors = load_file(out / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def dropping(*suffixes):
    def change(tensors):
        for key in [k for k in tensors if k.endswith(suffixes)]:
            del tensors[key]
    return change


def widening(suffix):
    def change(tensors):
        key = next(k for k in tensors if k.endswith(suffix))
        tensors[key] = torch.cat([tensors[key], tensors[key][..., :1]], dim=-1)
    return change


HOSTILE = {
    "adalora": [({"init_r": 0}, "init_r must be an integer of at least 1"),
                ({"init_r": "6"}, "init_r must be an integer"),
                ({"init_r": 5}, "do not fit"),
                ({"lora_alpha": "5"}, "lora_alpha must be a finite number"),
                ({"rank_pattern": {"model.layers.0.self_attn.q_proj.lora_E": [True, 1]}}, "rank_pattern["),
                (dropping("layers.0.self_attn.q_proj.lora_E"), "lacks lora_E"),
                (widening("layers.1.mlp.down_proj.lora_A"), "do not fit")],
    "loha": [({"r": 0}, "r must be an integer of at least 1"),
             ({"alpha": "8"}, "alpha must be a finite number"),
             ({"r": 3}, "do not fit"),
             ({"rank_pattern": {"(": 2}}, "is not a valid pattern"),
             (dropping("layers.0.mlp.up_proj.hada_w2_b"), "lacks hada_w2_b"),
             (widening("layers.0.self_attn.q_proj.hada_w1_b"), "do not fit")],
    "lokr": [({"r": 0}, "r must be an integer of at least 1"),
             ({"r": 3}, "do not fit"),
             ({"alpha": None}, "alpha must be a finite number"),
             (dropping("layers.0.mlp.down_proj.lokr_w2_b"), "lacks lokr_w2_b"),
             (widening("layers.1.self_attn.v_proj.lokr_w1"), "do not fit")],
    "oft": [({"r": 0}, "exactly one of r (0) and oft_block_size (0)"),
            ({"r": "4"}, "r must be an integer"),
            ({"oft_block_size": ...}, "saved by PEFT before 0.14"),
            ({"r": 8}, "do not fit"),
            ({"fan_in_fan_out": True}, "Conv1D layers is not supported"),
            ({"coft": "yes"}, "coft must be true or false"),
            (widening("layers.0.self_attn.q_proj.oft_R.weight"), "do not fit")],
    "boft": [({"boft_block_size": 0}, "exactly one of boft_block_size (0)"),
             ({"boft_block_size": "4"}, "boft_block_size must be an integer"),
             ({"boft_block_size": 8}, "do not fit"),
             (dropping("layers.0.mlp.up_proj.boft_s"), "lacks boft_s"),
             (widening("layers.1.mlp.down_proj.boft_R"), "do not fit")],
    "ia3": [({"feedforward_modules": ["v_proj"]}, "do not fit"),
            ({"feedforward_modules": 5}, "feedforward_modules must be a string"),
            ({"feedforward_modules": "("}, "is not a valid pattern"),
            (dropping("ia3_l"), "holds no IA³ tensors"),
            (widening("layers.0.mlp.down_proj.ia3_l"), "do not fit")],
    "vera": [({"r": 0}, "r must be an integer of at least 1"),
             ({"r": 4}, "do not fit"),
             ({"projection_prng_key": "0"}, "projection_prng_key must be an integer"),
             ({"projection_prng_key": 2**70}, "outside the range a seed can take"),
             (dropping("vera_A"), "but not the other VeRA projection"),
             (dropping(".vera_A", ".vera_B"), "lacks the VeRA projections"),
             (widening("layers.0.self_attn.q_proj.vera_lambda_b"), "do not fit")],
    "fourierft": [({"n_frequency": 0}, "n_frequency must be an integer of at least 1"),
                  ({"scaling": "150"}, "scaling must be a finite number"),
                  ({"n_frequency": 49}, "do not fit"),
                  ({"random_loc_seed": 2**70}, "outside the range a seed can take"),
                  (dropping("layers.1.mlp.up_proj.fourierft_spectrum"), None),  # that module is then not adapted
                  (widening("layers.0.mlp.up_proj.fourierft_spectrum"), "do not fit")],
    "general-hra": [({"r": 3}, "PEFT's HRA layer built from adapter_config.json gives it (32, 3)"),
                    ({"r": "4"}, "PEFT cannot build here"),
                    (dropping("layers.0.self_attn.v_proj.hra_u"), "lacks base_model.model.model.layers.0.self_attn"),
                    (widening("layers.1.mlp.up_proj.hra_u"), "of shape (32, 5)")],
}


@pytest.mark.parametrize(("case", "index"), [(c, i) for c, changes in HOSTILE.items() for i in range(len(changes))])
def test_hostile_configs_and_tensors_exit_2_with_one_line(cli, case, index, adapter, tmp_path):
    _, base_dir, path = adapter(case)
    change, phrase = HOSTILE[case][index]
    bad = with_config(path, tmp_path, **change) if isinstance(change, dict) else with_tensors(path, tmp_path, change)
    code, out, err = cli("scan", base_dir, bad, "--json", "--no-cache")
    if phrase is None:
        assert code == 0, err
        return
    assert code == 2 and out == "", err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert phrase in err and str(bad) in err, err


# -- mitigation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["oft", "general-randlora"])
def test_mitigate_writes_a_merged_checkpoint_and_says_so(cli, case, adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    model, base_dir, path = adapter(case)
    code, out, err = cli("mitigate", base_dir, path, "--lambda", "1", "--out", tmp_path / "same", "--no-cache")
    assert code == 0, err
    assert "merged checkpoint" in out and f"{DESCRIPTIONS[case]}" in out.replace("\n", " ")
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "same").state_dict()
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    for name in load_file(base_dir / "model.safetensors"):
        torch.testing.assert_close(written[name], merged[name], rtol=1e-5, atol=1e-5, msg=name)

    code, out, err = cli("mitigate", base_dir, path, "--lambda", "0.5", "--scope", "all", "--out",
                         tmp_path / "scaled", "--no-cache")
    assert code == 0 and "merged checkpoint" in out, err
    comparison = open_comparison(str(base_dir), [str(path)])
    scan = Scan(comparison, Cache(None), device="cpu", workers=1).run()
    chosen = plan(ScanResults(comparison, scan.results, scan.errors), 0, scope="all")
    written = load_file(tmp_path / "scaled" / "model.safetensors")
    assert chosen.matrices
    for matrix in chosen.matrices:  # W' = W + (λ − 1) Σ σ u vᵀ over the intruders, from W = PEFT's merge
        wanted = scale_intruders(merged[matrix.spec.name].double(), matrix.ranks, 0.5)
        torch.testing.assert_close(written[matrix.spec.name].double(), wanted, rtol=1e-5, atol=1e-5)
