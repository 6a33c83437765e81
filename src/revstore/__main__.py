"""``python -m revstore``: the command line."""

from revstore.cli import main

if __name__ == "__main__":
    main()
