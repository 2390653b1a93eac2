//! Image decoding (every format the image crate reads, EXIF orientation honoured).
