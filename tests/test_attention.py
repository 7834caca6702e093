"""The attention analysis of the paper's figure (reproduce/attention.py)."""
import json

import torch

import dropmae
from reproduce.attention import frame_attention_shares, main


def test_shares_on_a_hand_built_attention_matrix():
    """L = 4 (frames of 2 tokens). Rows: query 0 puts 0.7 on its own frame, query 1 0.2,
    query 2 (frame z) 1.0, query 3 0.5: within = (0.7 + 0.2 + 1.0 + 0.5) / 4 = 0.6."""
    a = torch.tensor([[0.3, 0.4, 0.1, 0.2],
                      [0.1, 0.1, 0.5, 0.3],
                      [0.0, 0.0, 0.6, 0.4],
                      [0.25, 0.25, 0.0, 0.5]])
    within, between = frame_attention_shares(a.view(1, 1, 4, 4))
    assert abs(within - 0.6) < 1e-7 and abs(between - 0.4) < 1e-7
    # averaged over heads: a second head that attends only across frames halves `within`
    cross = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float)
    within, between = frame_attention_shares(torch.stack([a, cross]).view(1, 2, 4, 4))
    assert abs(within - 0.3) < 1e-7 and abs(between - 0.7) < 1e-7


def test_same_masks_for_every_checkpoint_and_cli(tmp_path):
    """The same checkpoint given twice gives identical numbers (the masking noise is shared),
    each layer's shares add up to 1, and the command writes the JSON."""
    torch.manual_seed(0)
    model = dropmae.DropMAE(dropmae.get_config("tiny"))
    path = tmp_path / "checkpoint-0.pth"
    torch.save({"model": model.state_dict(), "config": vars(model.cfg)}, path)
    main(["--ckpt", str(path), "--ckpt", str(path), "--names", "a", "b", "--data", "synthetic",
          "--videos", "3", "--out", str(tmp_path / "att")])
    saved = json.loads((tmp_path / "att" / "attention.json").read_text())
    assert "tiny scale" in saved["label"]                  # tiny numbers are labelled as such
    result = saved["result"]
    assert result["a"] == result["b"] and len(result["a"]["between"]) == 2
    for w, b in zip(result["a"]["within"], result["a"]["between"]):
        assert abs(w + b - 1) < 1e-5 and 0 < b < 1
