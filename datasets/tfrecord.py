"""Reading TFRecord files of tf.train.Example protos without TensorFlow.

A TFRecord file is a sequence of records, each framed as

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

(little endian), where masked_crc(x) = rotate_right(crc32c(x), 15) + 0xa282ead8 mod 2^32.
Each record's data is a serialized tf.train.Example:

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }   (entries: key = 1, value = 2)
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1; }
    Int64List { repeated int64 value = 1; }

Only the protobuf wire format is needed to read these: varints (wire type 0), 64-bit (1),
length-delimited (2) and 32-bit (5) fields.
"""
import struct

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class TFRecordError(Exception):
    """A TFRecord file that is truncated, corrupted or not a tf.train.Example."""


def masked_crc32c(data):
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path):
    """Yield the data of every record of a TFRecord file, checking both checksums."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(f"{path}: truncated record header at byte {offset}")
            length, length_crc = struct.unpack("<QI", header)
            # Check the length before trusting it with a read of that size.
            if masked_crc32c(header[:8]) != length_crc:
                raise TFRecordError(
                    f"{path}: length checksum mismatch in the record at byte {offset}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{path}: truncated record at byte {offset}")
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(
                    f"{path}: data checksum mismatch in the record at byte {offset}")
            yield data
            offset += 12 + length + 4


def _read_varint(buf, pos):
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("protobuf varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise TFRecordError("protobuf varint longer than 10 bytes")


def _fields(buf):
    """Yield (field_number, wire_type, value) of a serialized message.

    value is an int for varints, bytes-like for length-delimited and fixed-width fields.
    """
    buf = memoryview(buf)
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire_type == _BYTES:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise TFRecordError(f"unsupported protobuf wire type {wire_type} (field {number})")
        if pos > len(buf):
            raise TFRecordError(f"protobuf field {number} runs past the end of its message")
        yield number, wire_type, value


def _parse_feature(buf):
    """A Feature message -> list of bytes, float32 array or int64 array (empty list if unset)."""
    values = []
    for kind, _, body in _fields(buf):
        if kind == 1:  # BytesList
            values = [bytes(v) for n, w, v in _fields(body) if n == 1 and w == _BYTES]
        elif kind == 2:  # FloatList: packed (one length-delimited blob) or one fixed32 each
            parts = [np.frombuffer(v, "<f4") for n, w, v in _fields(body) if n == 1]
            values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        elif kind == 3:  # Int64List: packed varints or one varint each
            ints = []
            for n, w, v in _fields(body):
                if n != 1:
                    continue
                if w == _VARINT:
                    ints.append(v)
                else:
                    pos = 0
                    while pos < len(v):
                        item, pos = _read_varint(v, pos)
                        ints.append(item)
            # Varints carry int64 in two's complement.
            values = np.array([i - (1 << 64) if i >= 1 << 63 else i for i in ints], np.int64)
    return values


def parse_example(data):
    """A serialized tf.train.Example -> {feature name: values}."""
    features = {}
    for number, wire_type, body in _fields(data):
        if number != 1 or wire_type != _BYTES:
            continue
        for entry_number, _, entry in _fields(body):
            if entry_number != 1:
                continue
            key, value = None, b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = bytes(v).decode("utf-8")
                elif n == 2:
                    value = v
            if key is None:
                raise TFRecordError("tf.train.Example feature entry without a name")
            features[key] = _parse_feature(value)
    return features
