// Package identity holds the rules every part of groupmatch applies to a
// customer's identity values (phone, openid, unionid, thirdId, email) before they
// are looked up or stored, so that a record the matcher reads and a line
// `directory load` reads mean the same customer (SPEC §5):
//
//   - the block list of values that count as absent (IsBlocked, Usable);
//   - the canonical form of a phone (NormalizePhone) and of an email;
//   - what PostgreSQL text can hold (Storable, HasNUL) and the code-point
//     limits of SPEC §10 (LongerThan);
//   - the names a record's identityType may use (ParseIdentityType);
//   - what a result page may show of a value (MaskPhone, MaskID);
//   - a directory entry of a value (Binding), which the directory returns
//     and resolution reads.
//
// Kinds is the one table of identity kinds (kinds.go): which request field
// carries a kind, how it is normalised and masked, whether an application
// scope applies to it, its place in the two fuzzy priority orders, and
// where the directory keeps it. Ingest, matcher, directory, sink and bench
// read it; adding a kind starts there.
//
// It is a leaf: it does no I/O, keeps no state, logs nothing, and imports
// only the standard library and the pipeline vocabulary. Its functions are
// pure and safe for concurrent use. It never puts a value it is given into
// an error.
package identity
