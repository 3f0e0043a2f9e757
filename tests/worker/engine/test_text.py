import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from shared.formats.prompts import ClassMention
from worker.engine.builtin.make_tiny_random import build_tokenizer
from worker.engine.text import UnknownWordsError, token_groups, tokenize


def word_level_tokenizer():
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "red", "circle", "and", "blue", "square"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=12)


def test_token_groups_follow_character_spans_and_skip_special_tokens():
    tok = word_level_tokenizer()
    prompt = "a red circle and a blue square"
    enc = tokenize(tok, [prompt])
    offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]
    mentions = (ClassMention("circle", 1, ((6, 12),)), ClassMention("square", 2, ((24, 30),)))
    assert token_groups(offsets, mentions) == [[3], [7]]  # [BOS] is token 0


def test_bpe_words_map_to_all_their_sub_tokens():
    tok = build_tokenizer()  # byte-level: one token per character
    enc = tokenize(tok, ["a cat"])
    offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]
    assert token_groups(offsets, (ClassMention("cat", 1, ((2, 5),)),)) == [[2, 3, 4]]


def test_words_cut_off_by_the_length_limit_give_an_empty_group():
    tok = build_tokenizer()  # 16 tokens including start and end
    prompt = "a " * 14 + "cat"
    enc = tokenize(tok, [prompt])
    offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]
    assert token_groups(offsets, (ClassMention("cat", 1, ((28, 31),)),)) == [[]]


def test_unknown_words_of_a_word_level_vocabulary_are_refused_with_the_vocabulary():
    with pytest.raises(UnknownWordsError) as err:
        tokenize(word_level_tokenizer(), ["a green circle"])
    message = str(err.value)
    assert "'green'" in message and "known words:" in message and "circle" in message
