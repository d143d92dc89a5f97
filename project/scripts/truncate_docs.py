"""Cut every doc of a .spacy file (DocBin) to its first N tokens, keeping doc.cats and the entities inside.

Long documents cost a BERT encoder time in proportion to their length, while a news article's
topic is clear from its first paragraph; the demo trains and evaluates text classification on the
first `textcat_max_tokens` (64) tokens to stay within its CPU time budget.

    python scripts/truncate_docs.py corpus/textcat corpus/textcat-short --max-tokens 64
"""

from pathlib import Path

import spacy
import typer
from spacy.tokens import Doc, DocBin

SPLITS = ("train", "dev", "test")

app = typer.Typer(add_completion=False)


def truncate(doc: Doc, max_tokens: int) -> Doc:
    """The first `max_tokens` tokens of `doc` as a new Doc, with the same cats and the entities that fit."""
    if max_tokens <= 0 or len(doc) <= max_tokens:
        return doc
    short = doc[:max_tokens].as_doc()
    short.cats = dict(doc.cats)
    return short


@app.command()
def main(
    in_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder with train/dev/test.spacy"),
    out_dir: Path = typer.Argument(..., help="Folder for the truncated train/dev/test.spacy"),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens kept per doc; 0 keeps whole docs"),
) -> None:
    """Write IN_DIR/<split>.spacy to OUT_DIR/<split>.spacy with each doc cut to its first MAX_TOKENS tokens."""
    vocab = spacy.blank("en").vocab
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        source = in_dir / f"{split}.spacy"
        if not source.exists():
            typer.secho(
                f"{source} does not exist: run the project's `corpus` command first",
                err=True,
                fg=typer.colors.RED,
            )
            raise typer.Exit(1)
        docs = [truncate(doc, max_tokens) for doc in DocBin().from_disk(source).get_docs(vocab)]
        DocBin(docs=docs, store_user_data=False).to_disk(out_dir / f"{split}.spacy")
        tokens = sum(len(doc) for doc in docs)
        typer.echo(f"{split}: {len(docs)} docs, {tokens} tokens -> {out_dir / f'{split}.spacy'}")


if __name__ == "__main__":
    app()
