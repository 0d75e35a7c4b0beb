"""pprof profile.proto message classes for the test oracle, built at run time.

protoc is not installed, so the descriptor of pprof's profile.proto
(package perftools.profiles) is written out by hand here and turned into
message classes with python3-protobuf. Field numbers and types follow the
upstream profile.proto exactly; this module shares nothing with the C engine.

Exports: Profile, ValueType, Sample, Label, Mapping, Location, Line,
Function, load(path) -> Profile, loads(bytes) -> Profile,
dump_bytes(profile, gz=True) -> bytes, save(profile, path, gz=True).
"""

import zlib

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, message type name or None)
_I64, _U64, _BOOL, _STR, _MSG = (_F.TYPE_INT64, _F.TYPE_UINT64, _F.TYPE_BOOL,
                                 _F.TYPE_STRING, _F.TYPE_MESSAGE)
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

_MESSAGES = {
    "Profile": [
        ("sample_type", 1, _MSG, _REP, "ValueType"),
        ("sample", 2, _MSG, _REP, "Sample"),
        ("mapping", 3, _MSG, _REP, "Mapping"),
        ("location", 4, _MSG, _REP, "Location"),
        ("function", 5, _MSG, _REP, "Function"),
        ("string_table", 6, _STR, _REP, None),
        ("drop_frames", 7, _I64, _OPT, None),
        ("keep_frames", 8, _I64, _OPT, None),
        ("time_nanos", 9, _I64, _OPT, None),
        ("duration_nanos", 10, _I64, _OPT, None),
        ("period_type", 11, _MSG, _OPT, "ValueType"),
        ("period", 12, _I64, _OPT, None),
        ("comment", 13, _I64, _REP, None),
        ("default_sample_type", 14, _I64, _OPT, None),
        # upstream: int64 doc_link = 15, an index into string_table (Go decodes it so).
        ("doc_link", 15, _I64, _OPT, None),
    ],
    "ValueType": [
        ("type", 1, _I64, _OPT, None),
        ("unit", 2, _I64, _OPT, None),
    ],
    "Sample": [
        ("location_id", 1, _U64, _REP, None),
        ("value", 2, _I64, _REP, None),
        ("label", 3, _MSG, _REP, "Label"),
    ],
    "Label": [
        ("key", 1, _I64, _OPT, None),
        ("str", 2, _I64, _OPT, None),
        ("num", 3, _I64, _OPT, None),
        ("num_unit", 4, _I64, _OPT, None),
    ],
    "Mapping": [
        ("id", 1, _U64, _OPT, None),
        ("memory_start", 2, _U64, _OPT, None),
        ("memory_limit", 3, _U64, _OPT, None),
        ("file_offset", 4, _U64, _OPT, None),
        ("filename", 5, _I64, _OPT, None),
        ("build_id", 6, _I64, _OPT, None),
        ("has_functions", 7, _BOOL, _OPT, None),
        ("has_filenames", 8, _BOOL, _OPT, None),
        ("has_line_numbers", 9, _BOOL, _OPT, None),
        ("has_inline_frames", 10, _BOOL, _OPT, None),
    ],
    "Location": [
        ("id", 1, _U64, _OPT, None),
        ("mapping_id", 2, _U64, _OPT, None),
        ("address", 3, _U64, _OPT, None),
        ("line", 4, _MSG, _REP, "Line"),
        ("is_folded", 5, _BOOL, _OPT, None),
    ],
    "Line": [
        ("function_id", 1, _U64, _OPT, None),
        ("line", 2, _I64, _OPT, None),
        ("column", 3, _I64, _OPT, None),
    ],
    "Function": [
        ("id", 1, _U64, _OPT, None),
        ("name", 2, _I64, _OPT, None),
        ("system_name", 3, _I64, _OPT, None),
        ("filename", 4, _I64, _OPT, None),
        ("start_line", 5, _I64, _OPT, None),
    ],
}

_PACKAGE = "perftools.profiles"


def _file_descriptor(packed=True):
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.name = "pdelta_oracle/profile%s.proto" % ("" if packed else "_unpacked")
    fdp.package = _PACKAGE
    fdp.syntax = "proto3"
    for msg_name, fields in _MESSAGES.items():
        mdp = fdp.message_type.add()
        mdp.name = msg_name
        for name, number, ftype, label, type_name in fields:
            f = mdp.field.add()
            f.name = name
            f.number = number
            f.type = ftype
            f.label = label
            if type_name:
                f.type_name = "." + _PACKAGE + "." + type_name
            if not packed and label == _REP and ftype != _MSG and ftype != _STR:
                f.options.packed = False
    return fdp


def _build_classes(packed=True, bytes_strings=False):
    # A private pool: never clashes with another profile.proto in the process.
    pool = descriptor_pool.DescriptorPool()
    fdp = _file_descriptor(packed)
    if bytes_strings:
        fdp.name = fdp.name.replace(".proto", "_bytes.proto")
        for m in fdp.message_type:
            for f in m.field:
                if f.type == _STR:
                    f.type = _F.TYPE_BYTES
    pool.Add(fdp)
    classes = {}
    get_class = getattr(message_factory, "GetMessageClass", None)
    factory = None if get_class else message_factory.MessageFactory(pool)
    for name in _MESSAGES:
        desc = pool.FindMessageTypeByName(_PACKAGE + "." + name)
        classes[name] = get_class(desc) if get_class else factory.GetPrototype(desc)
    return classes


_CLASSES = _build_classes()
Profile = _CLASSES["Profile"]
ValueType = _CLASSES["ValueType"]
Sample = _CLASSES["Sample"]
Label = _CLASSES["Label"]
Mapping = _CLASSES["Mapping"]
Location = _CLASSES["Location"]
Line = _CLASSES["Line"]
Function = _CLASSES["Function"]

# Same messages, but repeated scalars (location_id, value, comment) are written unpacked:
# legal protobuf that parsers must accept (tests only).
_UNPACKED = _build_classes(packed=False)
ProfileUnpacked = _UNPACKED["Profile"]

# Same messages with string_table as bytes: pprof strings need not be valid UTF-8 (Go does
# not check), but proto3 string fields must be. Used as a fallback when reading.
ProfileBytes = _build_classes(bytes_strings=True)["Profile"]

GZIP_MAGIC = b"\x1f\x8b"


def string_list(p):
    """p's string table as a list of str (bytes that are not UTF-8 are escaped)."""
    st = list(p.string_table)
    if st and isinstance(st[0], bytes):
        st = [x.decode("utf-8", "surrogateescape") for x in st]
    return st


def serialize_unpacked(profile):
    """profile's bytes with every repeated scalar field in unpacked form."""
    q = ProfileUnpacked()
    q.ParseFromString(profile.SerializeToString())
    return q.SerializeToString()


# The oracle never needs more than this; hostile inputs (gzip bombs) must not make the
# test harness itself run out of memory.
MAX_INFLATED = 1 << 30


class TooLarge(ValueError):
    pass


def raw_bytes(data, max_inflated=MAX_INFLATED):
    """The protobuf bytes of a file's content: gunzipped when it starts with the gzip magic."""
    if data[:2] != GZIP_MAGIC:
        return data
    d = zlib.decompressobj(31)
    out = d.decompress(data, max_inflated + 1)
    if len(out) > max_inflated or d.unconsumed_tail:
        raise TooLarge("inflates to more than %d bytes" % max_inflated)
    out += d.flush()
    if not d.eof:
        raise ValueError("truncated gzip stream")
    return out


def loads(data, max_inflated=MAX_INFLATED, any_bytes=False):
    """Parses a profile. any_bytes: parse as ProfileBytes, which accepts strings that are
    not UTF-8 (read its string table through string_list())."""
    raw = raw_bytes(data, max_inflated)
    p = ProfileBytes() if any_bytes else Profile()
    p.ParseFromString(raw)
    return p


def load(path, max_inflated=MAX_INFLATED, any_bytes=False):
    with open(path, "rb") as f:
        return loads(f.read(), max_inflated, any_bytes)


def dump_bytes(profile, gz=True, level=1):
    raw = profile.SerializeToString()
    if not gz:
        return raw
    co = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31 = gzip container
    return co.compress(raw) + co.flush()


def save(profile, path, gz=True):
    with open(path, "wb") as f:
        f.write(dump_bytes(profile, gz))
