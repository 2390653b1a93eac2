"""Offline setup for using the Ultralytics pip package as a test oracle.

Ultralytics is AGPL: it is only *run* by the scripts in tools/ to produce reference numbers;
none of its code is copied into the Rust crates.

Import this module before `ultralytics`: it sets YOLO_OFFLINE, a private YOLO_CONFIG_DIR and
puts a local TTF there as Arial.ttf so nothing tries to download a font or check for updates.
"""
import os
import shutil
import tempfile

_cfg = os.path.join(tempfile.gettempdir(), "yolo-rs-ultralytics-config")
os.makedirs(_cfg, exist_ok=True)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", _cfg)
os.environ.setdefault("YOLO_VERBOSE", "False")
_font = os.path.join(_cfg, "Arial.ttf")
if not os.path.exists(_font):
    import matplotlib

    src = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
    shutil.copy(src, _font)
