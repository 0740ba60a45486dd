"""Figure 2's similarity: the mean hidden state of the expression's tokens against each visual
token's, at one LLM layer, by cosine; the instruction around the quoted expression is not used."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlmswap.diagnostics.figure2 import expression_span, similarity_map
from vlmswap.language import PAD_TOKEN, train_tokenizer
from vlmswap.vlm import VLM, VLMHead


class TinyVision(torch.nn.Module):
    embed_dim, mean, std = 8, (0.5,) * 3, (0.5,) * 3

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 8, 8)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    tok = train_tokenizer(['USER: Please provide the box: "the red circle" ASSISTANT: [0.1, 0.2]'] * 5, 120)
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id))
    return VLM(TinyVision(), VLMHead("mlp2", 8, llm).eval(), tok)


def test_the_expression_is_the_last_quoted_part():
    prompt = 'USER: Please provide the box: "the red circle" ASSISTANT:'
    start, end = expression_span(prompt)
    assert prompt[start:end] == "the red circle"
    with pytest.raises(ValueError, match="no quoted referring expression"):
        expression_span("USER: no quotes here")


def test_similarity_is_the_cosine_to_the_mean_expression_token(vlm):
    pixels = torch.randn(3, 32, 32)
    prompt = 'USER: Please provide the box: "the red circle" ASSISTANT:'
    sims = similarity_map(vlm, pixels, prompt, layer=1)
    assert sims.shape == (16,) and sims.abs().max() <= 1.0

    # the same by hand: the hidden states of the whole sequence, then the expression's tokens
    enc = vlm.tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    start, end = expression_span(prompt)
    span = [j for j, (a, b) in enumerate(enc["offset_mapping"]) if j > 0 and a < end and b > start]
    # a token may carry a quote with it: tokens overlapping the expression are its tokens
    decoded = vlm.tokenizer.decode([enc["input_ids"][j] for j in span]).replace(" ", "").strip("\"")
    assert decoded == "theredcircle"
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        feats = vlm.head.projector(vlm.features(pixels[None]))
        text = vlm.head.llm.get_input_embeddings()(ids)
        embeds = torch.cat([text[:, :1], feats, text[:, 1:]], dim=1)
        hidden = vlm.head.llm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[1][0]
    query = hidden[[16 + j for j in span]].mean(0)
    expected = torch.nn.functional.cosine_similarity(hidden[1:17], query[None], dim=-1)
    torch.testing.assert_close(sims, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="the LLM has 2 layers"):
        similarity_map(vlm, pixels, prompt, layer=5)
