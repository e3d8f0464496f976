"""Dataset readers: one file per dataset format, each turning that format's files into `Record`s for stage 1.

    from readers import READERS, ReadOptions, read_dataset
    dataset = read_dataset(ReadOptions(media_dir, annotations), name=None)   # detected from the files

A new format is one module with a `READER = Reader(name, description, detect, read)` and one line in READERS.
`detect` must be unambiguous (it looks for the format's own file names); where two readers claim the same files,
stage 1 refuses and `--dataset NAME` says which. The order below is the order of --help and of messages.
"""

from __future__ import annotations

from pathlib import Path

from readers import diving48, folder, generic, hmdb51, jester, kinetics, ssv2, ucf101
from readers.base import SPLITS, Dataset, Reader, ReadOptions, Record
from splits import OfficialSplit, checked_split
from utils import BadInputError

READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        folder.READER,
        ucf101.READER,
        hmdb51.READER,
        ssv2.READER,
        jester.READER,
        diving48.READER,
        kinetics.READER,
        generic.READER,
    )
}

__all__ = ["READERS", "SPLITS", "Dataset", "ReadOptions", "Reader", "Record", "read_dataset", "select_reader"]


def _expected() -> str:
    return "; ".join(f"{r.name}: {r.description}" for r in READERS.values() if r.needs_annotations)


def select_reader(options: ReadOptions, name: str | None = None) -> Reader:
    """The reader `name` names, else the one whose files are there; refused in one line naming the files and
    what was expected when none or several match."""
    if name is not None:
        if name not in READERS:
            raise BadInputError(f"--dataset {name}: unknown format (known: {', '.join(READERS)})")
        reader = READERS[name]
        if reader.needs_annotations and options.annotations is None:
            raise BadInputError(f"--dataset {name} reads annotation files: give them with --split_dir")
        if not reader.needs_annotations and options.annotations is not None:
            raise BadInputError(f"--dataset {name} takes no --split_dir (got {options.annotations})")
        return reader
    if options.annotations is not None and not options.annotations.exists():
        raise BadInputError(f"split folder not found: {options.annotations}")
    found = [r for r in READERS.values() if r.detect(options)]
    if not found:
        raise BadInputError(f"{options.annotations} holds the files of no known dataset format; expected {_expected()}")
    if len(found) > 1:
        raise BadInputError(f"{options.annotations} holds files of several formats ({', '.join(r.name for r in found)});"
                            " --dataset NAME says which one to read")
    return found[0]


def read_dataset(options: ReadOptions, name: str | None = None) -> Dataset:
    return select_reader(options, name).read(options)


# ----- the official UCF-101 / HMDB51 split files on their own (tests, tools) --------------------------------------


def detect_split_format(split_dir: str | Path) -> str:
    """'ucf101' (classInd.txt + trainlist0N.txt) or 'hmdb51' (<class>_test_splitN.txt), from the files present."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise BadInputError(f"split folder not found: {split_dir}")
    if ucf101.is_split_dir(split_dir):
        return "ucf101"
    if hmdb51.is_split_dir(split_dir):
        return "hmdb51"
    raise BadInputError(
        f"{split_dir} holds neither UCF-101 split files (classInd.txt, trainlist0N.txt, testlist0N.txt) "
        "nor HMDB51 ones (<class>_test_splitN.txt)"
    )


def read_official_split(split_dir: str | Path, split_id: int) -> OfficialSplit:
    """Read UCF-101 or HMDB51 split `split_id`, detecting which from the files."""
    split_dir = Path(split_dir)
    reader = ucf101 if detect_split_format(split_dir) == "ucf101" else hmdb51
    return checked_split(reader.read_split(split_dir, split_id), split_id, split_dir)
