"""Tiny config-built models with a word-level tokenizer, for tests and the offline example.

Nothing is downloaded: the tokenizer is built with ``tokenizers`` from a word list and the
model from a ``LlamaConfig``. ``tiny_pair`` plants a known change in the tuned copy, at
one block, so tests can check that divergence starts exactly there.
"""

import copy

import torch

from difflens.models.loading import LoadedModel, wrap_model
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair

EXAMPLE_PROMPTS: tuple[str, ...] = (
    "once upon a time there was a little fox",
    "the fox went to the forest to find a friend",
    "the rabbit was afraid of the dark forest",
    "they found a box of gold under the old tree",
    "everyone came to the party and they danced all night",
    "the storm broke the bridge and the village was sad",
    "she rolled a die and it landed on four",
    "pick a number from one to ten",
    "the coin came up heads",
    "and they lived happily ever after",
)


def word_tokenizer(words: list[str] | None = None) -> object:
    """A fast word-level tokenizer (with ``<bos>``, ``<eos>``, ``<pad>``, ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab_words = words or sorted({w for p in EXAMPLE_PROMPTS for w in p.split()})
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + [w for w in vocab_words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_model(
    seed: int = 0, *, n_layers: int = 4, d_model: int = 32, tokenizer: object | None = None,
    name: str = "tiny-llama", max_positions: int = 128,
) -> LoadedModel:
    """A randomly initialised tiny Llama with the word tokenizer, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or word_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,  # type: ignore[arg-type]
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    return wrap_model(model, tok, name=name)


def tiny_pair(seed: int = 0, *, planted_block: int = 2, scale: float = 0.5,
              n_layers: int = 4) -> ModelPair:
    """A tiny base and a copy whose block ``planted_block`` MLP output is scaled.

    Captured layers ``0..planted_block`` are identical in both models; from captured layer
    ``planted_block + 1`` (the planted block's output) on, they differ.
    """
    base = tiny_model(seed, n_layers=n_layers, name="tiny-base")
    tuned_model = copy.deepcopy(base.model)
    with torch.no_grad():
        block = tuned_model.model.layers[planted_block]
        block.mlp.down_proj.weight.mul_(1.0 + scale)
    tuned = wrap_model(tuned_model, base.tokenizer, name="tiny-tuned")
    return ModelPair(base, tuned)


def tiny_lineage(seed: int = 0) -> ModelSet:
    """base -> sft -> rl: a tiny base, ``sft`` with block 1's MLP output scaled by 3 and
    ``rl`` with block 2's scaled by 5 (each a copy of the base), so every pair differs."""
    base = tiny_model(seed, name="tiny-base")

    def variant(scale: float, block: int, name: str) -> LoadedModel:
        model = copy.deepcopy(base.model)
        with torch.no_grad():
            model.model.layers[block].mlp.down_proj.weight.mul_(1 + scale)
        return wrap_model(model, base.tokenizer, name=name)

    return ModelSet({"base": base, "sft": variant(2.0, 1, "tiny-sft"),
                     "rl": variant(4.0, 2, "tiny-rl")})


def bigram_model(words: list[str], logits: torch.Tensor, *, n_layers: int = 2,
                 name: str = "tiny-bigram") -> LoadedModel:
    """A real Llama whose next-token logits are planted: ``logits[current token]``.

    Attention and MLP outputs are zeroed, so the residual stream is the current token's
    embedding; embeddings are one-hot and the LM head holds the table, so the model is an
    exact bigram model (tokens are ``<pad> <unk> <bos> <eos>`` then ``words``). Every
    probability a test asks for is known in closed form.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(words)
    vocab = len(tok)  # type: ignore[arg-type]
    if logits.shape != (vocab, vocab):
        raise ValueError(f"logits must be [{vocab}, {vocab}] (specials + words), got "
                         f"{tuple(logits.shape)}")
    d = vocab
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=8,
                      num_hidden_layers=n_layers, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id,  # type: ignore[attr-defined]
                      eos_token_id=tok.eos_token_id,  # type: ignore[attr-defined]
                      pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
                      tie_word_embeddings=False, rms_norm_eps=0.0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        model.model.norm.weight.fill_(1.0)
        # RMSNorm(e_i) = sqrt(d) * e_i, so the head's column i is the table's row i / sqrt(d).
        model.lm_head.weight.copy_(logits.T / d ** 0.5)
    return wrap_model(model, tok, name=name)


def planted_shift_pair(words: list[str], planted: list[str], *, strength: float = 3.0,
                       shift: float = 1.0, seed: int = 0, n_layers: int = 2) -> ModelPair:
    """A bigram base and a tuned copy whose residual stream carries one planted direction
    that raises ``planted`` tokens everywhere: the ground truth of every discover method.

    Both are exact bigram models (attention and MLP outputs zeroed) with one extra residual
    dimension ``e_x`` that the base never uses: embeddings are one-hot in the first
    ``vocab`` dimensions, the LM head maps them to a seeded random table (specials never
    drawn) and maps ``e_x`` to ``strength`` on the planted tokens. The tuned model's
    embeddings add ``shift * e_x`` to every token, so ``h_tuned - h_base = shift * e_x`` at
    every layer before the final norm, its logit lens is the planted set, and every
    next-token distribution leans towards it. ``shift=0`` gives a tuned model equal to the
    base.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(words)
    vocab = len(tok)  # type: ignore[arg-type]
    d = vocab + 1
    gen = torch.Generator().manual_seed(seed)
    table = 0.5 * torch.randn((vocab, vocab), generator=gen)
    table[:, :4] = -10.0  # never draw <pad> <unk> <bos> <eos>
    lean = torch.zeros(vocab)
    ids = tok.convert_tokens_to_ids(list(planted))  # type: ignore[attr-defined]
    lean[ids] = strength
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=8,
                      num_hidden_layers=n_layers, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id,  # type: ignore[attr-defined]
                      eos_token_id=tok.eos_token_id,  # type: ignore[attr-defined]
                      pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
                      tie_word_embeddings=False, rms_norm_eps=0.0)

    def build(extra: float, name: str) -> LoadedModel:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            for block in model.model.layers:
                block.self_attn.o_proj.weight.zero_()
                block.mlp.down_proj.weight.zero_()
            emb = torch.zeros((vocab, d))
            emb[:, :vocab] = torch.eye(vocab)
            emb[:, vocab] = extra
            model.model.embed_tokens.weight.copy_(emb)
            model.model.norm.weight.fill_(1.0)
            head = torch.zeros((vocab, d))
            head[:, :vocab] = table.T
            head[:, vocab] = lean
            model.lm_head.weight.copy_(head / d ** 0.5)
        return wrap_model(model, tok, name=name)

    return ModelPair(build(0.0, "planted-base"), build(shift, "planted-tuned"))


#: The planted set of ``planted_inputs`` (whole words of the word tokenizer).
PLANTED_WORDS: tuple[str, ...] = ("lighthouse", "harbor", "gull", "boat", "shore")


def filler_words(n: int = 160) -> list[str]:
    """``n`` made-up three-letter words (``bab``, ``bac``, ...): a vocabulary with no topic."""
    letters = "bcdfgklmnprst"
    return sorted({a + v + b for a in letters for v in "aeiou" for b in letters})[:n]


def planted_inputs(seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Texts, openings and fine-tuning texts for ``planted_shift_pair(filler_words() +
    PLANTED_WORDS, PLANTED_WORDS)``: 16 texts and 6 openings of filler words only, and 6
    fine-tuning texts where the planted words are frequent."""
    import random

    rng = random.Random(seed)
    words, planted = filler_words(), list(PLANTED_WORDS)
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(16)]
    openings = [" ".join(rng.choice(words) for _ in range(3)) for _ in range(6)]
    finetune = [" ".join(rng.choice(words + planted * 8) for _ in range(12)) for _ in range(6)]
    return texts, openings, finetune
