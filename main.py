def cli() -> None:
    pass
