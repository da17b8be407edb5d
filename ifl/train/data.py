"""LLaVA JSON records -> token ids with answer-only labels, pixel tensors, padded micro-batches.

Record (LLaVA's schema, docs/sources.md §5; `image` absent for text-only records):
    {"id": "...", "image": "coco/train2017/1.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"}, {"from": "gpt", ...}]}

Everything is tokenised once, up front, with offset mappings: a token is trained when its first
character lies in a piece that `ifl.prompts.segments` marks as trained (the answer text and its
end marker). Tokenising the whole text at once (rather than piece by piece) keeps the token
boundaries exactly as at inference. `<image>` (one added token) is then expanded to one
placeholder per image feature.

>>> from ifl.prompts import template
>>> rec = {"id": "1", "image": "a.png", "conversations": [
...     {"from": "human", "value": "What is it?\\n<image>"}, {"from": "gpt", "value": "A star."}]}
>>> render(rec, template("llava_hf"))
[('USER: <image>\\nWhat is it? ', False), ('ASSISTANT:', False), (' A star.</s>', True)]
>>> render(rec, "plain")   # LLaVA-1.5's stage-1 format: image, caption, newline
[('<image>', False), ('A star.\\n', True)]
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ifl.answer_spans import IGNORE, join_pieces, labels_of
from ifl.prompts import IMAGE_TOKEN, ChatTemplate, conversation_turns, segments

PRELOAD_LIMIT_BYTES = 2 * 2**30  # pre-load all pixel tensors when they fit in this
log = logging.getLogger(__name__)


def _image_first(text: str) -> str:
    """LLaVA's preprocess_multimodal: `<image>` moved to the front of its turn, then a newline."""
    return IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()


def render(record: dict, template: ChatTemplate | str, image_to_front: bool = True
           ) -> list[tuple[str, bool]]:
    """(text, trained) pieces of one record. template: a ChatTemplate, or "plain" (LLaVA-1.5
    stage 1: `<image>` then the first answer, no instruction, no chat markup)."""
    turns = conversation_turns(record)
    n_image = sum(text.count(IMAGE_TOKEN) for _, text in turns)
    has_image = bool(record.get("image"))
    if n_image != (1 if has_image else 0):
        raise ValueError(f"record {record.get('id')!r}: {n_image} {IMAGE_TOKEN} tokens but "
                         f"{'one image' if has_image else 'no image'}; LLaVA records have exactly "
                         f"one {IMAGE_TOKEN} in a human turn when they have an image, none otherwise")
    if template == "plain":
        if not has_image or len(turns) < 2:
            raise ValueError(f"record {record.get('id')!r}: the plain format needs an image and a "
                             "human/gpt pair (stage-1 caption records)")
        return [(IMAGE_TOKEN, False), (turns[1][1] + "\n", True)]
    if image_to_front:
        turns = [(role, _image_first(text) if IMAGE_TOKEN in text else text) for role, text in turns]
    return segments(template, turns)


def encode_records(records: list[dict], tokenizer, template: ChatTemplate | str, *,
                   image_token_id: int, n_image_tokens: int, max_length: int,
                   image_to_front: bool = True, progress: bool = False
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """(input_ids, labels, kept record positions). Each (L,) int64, L <= max_length, labels -100
    outside answers and on the n_image_tokens placeholders. A record whose image placeholders
    would be cut by truncation is dropped (LLaVA would fail on it); its position is not kept."""
    texts, spans = [], []
    for rec in records:
        text, trained = join_pieces(render(rec, template, image_to_front))
        texts.append(text)
        spans.append(trained)
    ids_out, labels_out, kept = [], [], []
    chunk = 4096
    for lo in tqdm(range(0, len(texts), chunk), desc="tokenise", disable=not progress):
        enc = tokenizer(texts[lo:lo + chunk], add_special_tokens=True, return_offsets_mapping=True)
        for k, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            ids = np.asarray(ids, dtype=np.int64)
            labels = labels_of(ids, offsets, spans[lo + k])  # the rule the miniature's LMs use
            where = np.flatnonzero(ids == image_token_id)
            if len(where):  # one <image> -> n_image_tokens placeholders, never trained
                p = where[0]
                ids = np.concatenate([ids[:p], np.full(n_image_tokens, image_token_id), ids[p + 1:]])
                labels = np.concatenate([labels[:p], np.full(n_image_tokens, IGNORE), labels[p + 1:]])
                if p + n_image_tokens > max_length:
                    continue
            ids_out.append(torch.from_numpy(ids[:max_length]))
            labels_out.append(torch.from_numpy(labels[:max_length]))
            kept.append(lo + k)
    if len(kept) < len(records):
        log.warning("dropped %d of %d records whose image placeholders exceed max_length=%d",
                    len(records) - len(kept), len(records), max_length)
    return ids_out, labels_out, kept


def expand_to_square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA-1.5's `--image_aspect_ratio pad`: paste onto a square of the processor's mean colour."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


class ImageStore:
    """Pixel tensors of a list of image files, pre-loaded once when they fit in memory
    (PRELOAD_LIMIT_BYTES), else read from disk per batch.

    store[[0, 2]] -> (2, 3, H, W) float32, the image processor's output."""

    def __init__(self, folder: str | Path, files: list[str], image_processor, side: tuple[int, int],
                 *, pad_to_square: bool = False, preload: bool | None = None, progress: bool = False):
        self.folder, self.files, self.processor = Path(folder), list(files), image_processor
        self.pad_to_square = pad_to_square
        self.background = tuple(int(255 * m) for m in image_processor.image_mean)
        need = len(self.files) * 3 * side[0] * side[1] * 4
        self.preloaded = need <= PRELOAD_LIMIT_BYTES if preload is None else preload
        self.pixels = None
        if self.preloaded and self.files:
            chunks = [self._load(list(range(lo, min(lo + 512, len(self.files)))))
                      for lo in tqdm(range(0, len(self.files), 512), desc="images",
                                     disable=not progress)]
            self.pixels = torch.cat(chunks)

    def _open(self, i: int) -> Image.Image:
        path = self.folder / self.files[i]
        try:
            image = Image.open(path).convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} not found: check the image folder "
                                    f"(`image` paths in the records are relative to it)") from None
        return expand_to_square(image, self.background) if self.pad_to_square else image

    def _load(self, idx: list[int]) -> torch.Tensor:
        return self.processor(images=[self._open(i) for i in idx], return_tensors="pt")["pixel_values"]

    def __getitem__(self, idx: list[int]) -> torch.Tensor:
        if self.pixels is not None:
            return self.pixels[torch.as_tensor(idx, dtype=torch.long)]
        return self._load(list(idx))

    def __len__(self) -> int:
        return len(self.files)


def collate(input_ids: list[torch.Tensor], labels: list[torch.Tensor], pad_id: int) -> dict:
    """Right-padded batch: input_ids/attention_mask/labels (B, L_max); pads are masked and -100."""
    ids = torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True, padding_value=pad_id)
    lab = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE)
    lengths = torch.tensor([len(x) for x in input_ids])
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


class LlavaDataset(torch.utils.data.Dataset):
    """Tokenised records + their images. ds[i] -> dict(input_ids (L,), labels (L,),
    pixel_values (3, H, W) or None); ds.batch([i, j, ...]) -> padded micro-batch with
    pixel_values (n_with_image, 3, H, W) in record order, or None when no record has an image.

    template: a ChatTemplate or "plain"; pad_to_square: LLaVA-1.5 stage 2's aspect handling."""

    def __init__(self, records: list[dict], image_folder: str | Path | None, processor,
                 template: ChatTemplate | str, *, max_length: int, image_to_front: bool = True,
                 pad_to_square: bool = False, preload_images: bool | None = None,
                 progress: bool = False):
        from ifl.train.assemble import processed_side, processor_image_tokens
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        side = processed_side(processor.image_processor)
        n_image_tokens = processor_image_tokens(processor)
        self.input_ids, self.labels, kept = encode_records(
            records, tok, template, image_token_id=processor.image_token_id,
            n_image_tokens=n_image_tokens, max_length=max_length, image_to_front=image_to_front,
            progress=progress)
        if not kept:
            raise ValueError(f"no record fits max_length={max_length} (each image alone takes "
                             f"{n_image_tokens} tokens)")
        self.ids = [records[k].get("id") for k in kept]
        files = sorted({records[k]["image"] for k in kept if records[k].get("image")})
        position = {f: i for i, f in enumerate(files)}
        # image_index[i]: row of record i in the image store, -1 for a text-only record
        self.image_index = torch.tensor([position.get(records[k].get("image") or "", -1)
                                         for k in kept], dtype=torch.long)
        # answer tokens per record after the shift (the first label never has a prediction)
        self.n_targets = torch.tensor([int((lab[1:] != IGNORE).sum()) for lab in self.labels])
        if files and image_folder is None:
            raise ValueError("records have images: give image_folder")
        self.images = ImageStore(image_folder or ".", files, processor.image_processor, side,
                                 pad_to_square=pad_to_square, preload=preload_images,
                                 progress=progress)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        k = int(self.image_index[i])
        return {"input_ids": self.input_ids[i], "labels": self.labels[i],
                "pixel_values": self.images[[k]][0] if k >= 0 else None}

    def batch(self, indices: list[int]) -> dict:
        out = collate([self.input_ids[i] for i in indices], [self.labels[i] for i in indices],
                      self.pad_id)
        rows = [int(self.image_index[i]) for i in indices if self.image_index[i] >= 0]
        out["pixel_values"] = self.images[rows] if rows else None
        return out


class SamplePlan:
    """Which records each optimizer step uses: a stream of seeded permutations, one per epoch,
    cut into consecutive global batches, so step s always uses stream positions
    [s*G, (s+1)*G) whatever happened before (resume needs no sampler state).

    >>> plan = SamplePlan(n=10, global_batch=4, seed=0)
    >>> len(plan.global_indices(0)), plan.total_steps(epochs=1)
    (4, 3)
    >>> len(plan.micro_batches(step=0, micro_batch=1, rank=1, world=2))  # rank 1's half: 2 of 1
    2
    """

    def __init__(self, n: int, global_batch: int, seed: int):
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self._perms: dict[int, list[int]] = {}

    def total_steps(self, epochs: float = 1.0, max_steps: int | None = None) -> int:
        """max_steps overrides epochs (as in HF Trainer); the last step wraps into the next epoch."""
        return max_steps if max_steps is not None else max(1, math.ceil(epochs * self.n / self.global_batch))

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}  # one epoch cached
        return self._perms[epoch]

    def global_indices(self, step: int) -> list[int]:
        start = step * self.global_batch
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + self.global_batch)]

    def micro_batches(self, step: int, micro_batch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        """This process's contiguous share of step's global batch, cut into micro-batches."""
        idx = self.global_indices(step)
        share = self.global_batch // world
        mine = idx[rank * share:(rank + 1) * share]
        return [mine[k:k + micro_batch] for k in range(0, share, micro_batch)]
