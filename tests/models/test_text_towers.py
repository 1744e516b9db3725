"""Text towers: MiniLM reproduces sentence-transformers; truncation is reported; the small BERT pools right."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from radlens.core import InputError
from radlens.models.text_towers import (
    MiniLMTextTower,
    TextTowerConfig,
    build_text_tower,
    load_tokenizer,
    mean_pool,
    minilm_path,
)
from radlens.phantom import PhantomConfig, generate_dataset

SENTENCES = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion with adjacent atelectasis; heart size is normal.",
    "Interval placement of a right internal jugular central venous catheter, tip in the SVC.",
    "cat",
]


@pytest.fixture(scope="session")
def minilm() -> MiniLMTextTower:
    tower = build_text_tower(TextTowerConfig(max_length=512))
    assert isinstance(tower, MiniLMTextTower)
    return tower.eval()


def test_minilm_matches_sentence_transformers(minilm: MiniLMTextTower) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_path()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    batch = minilm.encode(SENTENCES)
    with torch.no_grad():
        ours = F.normalize(minilm(batch["input_ids"], batch["attention_mask"]).pooled, dim=-1)
    assert ours.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(ours, expected.cpu(), atol=1e-5, rtol=0)


def test_truncation_is_reported_at_512(minilm: MiniLMTextTower) -> None:
    tokenizer = minilm.tokenizer
    # "word" is one WordPiece token: 510 words + [CLS] + [SEP] fill 512 exactly; 511 words do not fit.
    batch = tokenizer.encode(["word " * 510, "word " * 511, "short report"], max_length=512)
    assert batch["truncated"].tolist() == [False, True, False]
    assert batch["input_ids"].shape == (3, 512)
    assert batch["input_ids"][1, -1].item() == tokenizer.hf.sep_token_id
    assert batch["attention_mask"][2].sum().item() == 4  # [CLS] short report [SEP]
    with torch.no_grad():
        out = minilm(batch["input_ids"][:2], batch["attention_mask"][:2])
    assert out.token_states.shape == (2, 512, 384)
    with pytest.raises(InputError, match="out of range"):
        tokenizer.encode(["x"], max_length=513)


def test_shorter_max_length_truncates_and_reports() -> None:
    batch = load_tokenizer().encode(["one two three four five", "one"], max_length=4)
    assert batch["truncated"].tolist() == [True, False]
    assert batch["input_ids"].shape == (2, 4)
    with pytest.raises(InputError, match="encode got no texts"):
        load_tokenizer().encode([])


def test_tokenizer_is_the_offline_minilm_wordpiece() -> None:
    folder = minilm_path()
    assert (folder / "vocab.txt").is_file()
    tokenizer = load_tokenizer()
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tokenizer.vocab_size == len(vocab)
    assert vocab[tokenizer.mask_token_id] == "[MASK]" and vocab[tokenizer.pad_token_id] == "[PAD]"
    encoded = tokenizer.encode(["Small LEFT effusion."])
    assert tokenizer.decode(encoded["input_ids"][0]) == "small left effusion."  # uncased WordPiece
    with pytest.raises(InputError, match="list of texts"):
        tokenizer.encode("a single string")  # type: ignore[arg-type]


def test_small_bert_pooling_ignores_padding() -> None:
    tower = build_text_tower(
        TextTowerConfig(name="small_bert", hidden_size=32, num_layers=1, num_heads=2)
    ).eval()
    batch = tower.encode(["a short one", "a much longer sentence with many more tokens in it"])
    alone = tower.encode(["a short one"])
    with torch.no_grad():
        padded = tower(batch["input_ids"], batch["attention_mask"])
        single = tower(alone["input_ids"], alone["attention_mask"])
    assert padded.token_states.shape[:2] == batch["input_ids"].shape and padded.pooled.shape == (2, 32)
    torch.testing.assert_close(padded.pooled[0], single.pooled[0], atol=1e-5, rtol=1e-5)


def test_mean_pool_is_the_masked_mean() -> None:
    states = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]])
    torch.testing.assert_close(mean_pool(states, mask), states[0, :2].mean(dim=0, keepdim=True))


def test_freeze_last_layers_only() -> None:
    tower = build_text_tower(TextTowerConfig(name="small_bert", hidden_size=32, num_layers=2, num_heads=2))
    tower.freeze(1)
    tower.train()
    assert not any(p.requires_grad for p in tower.bert.embeddings.parameters())
    assert not any(p.requires_grad for p in tower.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in tower.bert.encoder.layer[1].parameters())
    assert not tower.bert.embeddings.training and tower.bert.encoder.layer[1].training


def test_text_config_validation() -> None:
    with pytest.raises(ValidationError, match="no pretrained weights"):
        TextTowerConfig(name="small_bert", pretrained=True)
    with pytest.raises(ValidationError, match="max_length"):
        TextTowerConfig(max_length=600)
    config = TextTowerConfig(name="small_bert", hidden_size=64, num_heads=4)
    assert TextTowerConfig.from_yaml(config.to_yaml()) == config


def test_report_truncation_example_counts_what_a_token_limit_loses(tmp_path: Path) -> None:
    """docs/examples/report_truncation.py: a limit above every report keeps every label set; a limit of
    8 tokens (little beyond "findings :") keeps few and loses positive labels; a bad limit is one line."""
    generate_dataset(PhantomConfig(studies=30, size=64, seed=0, workers=1), tmp_path / "phantom")
    script = Path(__file__).parents[2] / "docs" / "examples" / "report_truncation.py"
    command = [sys.executable, str(script), str(tmp_path / "phantom"), "--limits", "8", "512"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {
        int(match[1]): (float(match[2]), float(match[3]), int(match[4]))
        for match in re.finditer(r"^ *(\d+) +([\d.]+)% +([\d.]+) +(\d+) of \d+$", done.stdout, re.MULTILINE)
    }
    assert rows[512] == (0.0, 1.0, 0), done.stdout
    cut, kept, lost = rows[8]
    assert cut == 100.0 and kept < 0.5 and lost > 0, done.stdout
    bad = subprocess.run([*command[:3], "--limits", "1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error: --limits"), bad.stderr
