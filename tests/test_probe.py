"""The forgetting probe against plain transformers / PEFT forward passes on the same tokens."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from models import lora_model, perturbed, save_adapter, tiny_llama

TEXT = (
    "Exceptions are a means of breaking out of the normal flow of control of a code block in order "
    "to handle errors or other exceptional conditions. An exception is raised at the point where the "
    "error is detected; it may be handled by the surrounding code block or by any code block that "
    "directly or indirectly invoked the code block where the error occurred.\n"
)
TASK = ["Q: 12 + 30 = ? A: 42", "Q: 7 - 9 = ? A: -2", "Q: 51 + 8 = ? A: 59"]


def tokenizer(specials: dict[str, str]):
    """A byte-level BPE tokenizer trained on TEXT (hubs are unreachable in tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(specials.values()), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT, *TASK], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


CAUSAL_SPECIALS = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny LLaMA with a tokenizer, a LoRA adapter of it, and the reference and task files."""
    root = tmp_path_factory.mktemp("probe")
    tok = tokenizer(CAUSAL_SPECIALS)
    base = tiny_llama(vocab=len(tok))
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    save_adapter(lora_model(base, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]),
                 root / "lora", base_ref="../base")
    (root / "ref.txt").write_text(TEXT)
    (root / "task.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TASK))
    return root


def probe_json(cli, *args):
    code, out, err = cli("probe", *args, "--json", "--no-cache")
    assert code == 0, err
    return json.loads(out)


def causal_loss(model, sequences):
    """Token-weighted mean of transformers' own per-sequence loss."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in sequences:
            ids = torch.tensor([ids])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_probe_equals_direct_forward_passes(cli, lm):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = probe_json(cli, lm / "base", lm / "lora", "--text", lm / "ref.txt", "--task", lm / "task.jsonl",
                      "--lambda-sweep", "0,1", "--max-tokens", "48", "--scope", "all")
    tok = AutoTokenizer.from_pretrained(lm / "base")
    reference = [tok(TEXT, add_special_tokens=False)["input_ids"][:48]]
    task = [tok(t)["input_ids"] + [tok.eos_token_id] for t in TASK]
    base = AutoModelForCausalLM.from_pretrained(lm / "base")
    tuned = PeftModel.from_pretrained(copy.deepcopy(base), lm / "lora")  # unmerged: PEFT's own forward
    rows = {(r["model"], r["lambda"]): r for r in data["rows"]}
    assert list(rows) == [("base", None), ("lora", None), ("lora", 0.0), ("lora", 1.0)]
    for key, model in ((("base", None), base), (("lora", None), tuned)):
        assert rows[key]["reference_tokens"] == 47 and rows[key]["task_count"] == 3 * 13
        assert rows[key]["reference_loss"] == pytest.approx(causal_loss(model, reference), rel=1e-5)
        assert rows[key]["task_loss"] == pytest.approx(causal_loss(model, task), rel=1e-5)
        assert rows[key]["reference_perplexity"] == pytest.approx(math.exp(rows[key]["reference_loss"]))
    tuned_loss = rows[("lora", None)]["reference_loss"]
    assert rows[("lora", 1.0)]["reference_loss"] == pytest.approx(tuned_loss, rel=1e-6)  # λ = 1 is the tuned model
    assert rows[("lora", 0.0)]["reference_loss"] != pytest.approx(tuned_loss, rel=1e-3)
    assert data["models"][0]["intruders_scaled"] > 0


def test_mitigated_row_equals_the_exported_merged_model(cli, lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = probe_json(cli, lm / "base", lm / "lora", "--text", lm / "ref.txt", "--lambda-sweep", "0.25",
                      "--max-tokens", "40")
    code, _, err = cli("mitigate", lm / "base", lm / "lora", "--lambda", "0.25", "--merged",
                           "--out", tmp_path / "merged", "--no-cache")
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(lm / "base")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    expected = causal_loss(merged, [tok(TEXT, add_special_tokens=False)["input_ids"][:40]])
    assert data["rows"][-1]["lambda"] == 0.25
    assert data["rows"][-1]["reference_loss"] == pytest.approx(expected, rel=1e-5)


def test_masked_lm_pseudo_loss_masks_every_token_once(cli, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from spectui.probe import MLM_GROUPS

    tok = tokenizer({"cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
                     "pad_token": "[PAD]"})
    torch.manual_seed(0)
    base = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    perturbed(base, scale=0.5).save_pretrained(tmp_path / "full")
    (tmp_path / "ref.txt").write_text(TEXT)
    data = probe_json(cli, tmp_path / "base", tmp_path / "full", "--text", tmp_path / "ref.txt",
                      "--lambda-sweep", "1", "--max-tokens", "30")
    content = tok(TEXT, add_special_tokens=False)["input_ids"][:30]
    ids = torch.tensor([[tok.cls_token_id, *content, tok.sep_token_id]])
    for row, model in zip(data["rows"], (base, BertForMaskedLM.from_pretrained(tmp_path / "full"))):
        losses = []
        with torch.no_grad():
            for position in range(1, 31):  # each content token, masked in its group's pass
                group = torch.arange(32) % MLM_GROUPS == position % MLM_GROUPS
                group[0] = group[-1] = False
                logits = model.eval()(input_ids=ids.masked_fill(group, tok.mask_token_id)).logits
                losses.append(F.cross_entropy(logits[0, position], ids[0, position]).item())
        assert row["reference_tokens"] == 30
        assert row["reference_loss"] == pytest.approx(sum(losses) / 30, rel=1e-5)


def test_classifier_task_loss_and_accuracy(cli, tmp_path):
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    tok = tokenizer(CAUSAL_SPECIALS)
    base = tiny_llama(vocab=len(tok))
    base.config.pad_token_id = tok.pad_token_id
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    torch.manual_seed(3)
    classifier = LlamaForSequenceClassification(base.config)
    classifier.model.load_state_dict(perturbed(base).model.state_dict())
    classifier.save_pretrained(tmp_path / "cls")
    (tmp_path / "ref.txt").write_text(TEXT)
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(TASK * 3)]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = probe_json(cli, tmp_path / "base", tmp_path / "cls", "--text", tmp_path / "ref.txt",
                      "--task", tmp_path / "task.jsonl", "--lambda-sweep", "1")
    base_row, tuned_row, _ = data["rows"]
    assert base_row["task_loss"] is None  # BASE has no trained head
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls").eval()
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.tensor([tok(row["text"])["input_ids"]])).logits
                            for row in rows])
    labels = torch.tensor([r["label"] for r in rows])
    assert tuned_row["task_count"] == len(rows)
    assert tuned_row["task_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert tuned_row["task_accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())


@pytest.mark.parametrize("option", ["--text", "--task"])
def test_missing_text_file_exits_2_with_one_line(cli, lm, tmp_path, option):
    files = {"--text": lm / "ref.txt", "--task": lm / "task.jsonl", option: tmp_path / "absent.txt"}
    options = [str(part) for option_and_file in files.items() for part in option_and_file]
    code, out, err = cli("probe", lm / "base", lm / "lora", *options, "--no-cache")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "absent.txt: no such file" in err
