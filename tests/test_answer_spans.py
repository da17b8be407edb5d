"""Pretraining the miniature's LMs and training LLaVA mask a conversation by one rule
(ifl.answer_spans): the same record gives the same trained tokens in both."""
import doctest

import pytest

from ifl import answer_spans
from ifl.answer_spans import IGNORE
from ifl.mini.lm import encode_chat
from ifl.mini.tokenizer import train_tokenizer
from ifl.prompts import template
from ifl.train.data import encode_records, render

RECORD = {"id": "t", "conversations": [
    {"from": "human", "value": "What colour is the square?"}, {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "And the circle?"}, {"from": "gpt", "value": "It is blue."}]}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = ["USER: What colour is the square? ASSISTANT: Red.</s>",
              "USER: And the circle? ASSISTANT: It is blue.</s>"] * 20
    return train_tokenizer(tmp_path_factory.mktemp("tok"), corpus, 300)


def test_doctests():
    assert doctest.testmod(answer_spans).failed == 0


def test_pretraining_and_llava_training_mask_a_conversation_alike(tokenizer):
    chat = template("llava_hf")
    ids, labels = encode_chat(tokenizer, render(RECORD, chat))
    llava_ids, llava_labels, kept = encode_records([RECORD], tokenizer, chat, image_token_id=-1,
                                                   n_image_tokens=0, max_length=512)
    assert kept == [0]
    assert llava_ids[0].tolist() == ids
    assert llava_labels[0].tolist() == labels
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    assert "Red." in trained and "It is blue." in trained and "square" not in trained
