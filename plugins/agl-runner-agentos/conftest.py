# The template is not a plugin: the repository's test run skips it. A copy (in a folder with another name)
# collects its tests normally, so this file can stay in the copy.
from pathlib import Path

collect_ignore_glob = ["*"] if Path(__file__).parent.name == "_template" else []
