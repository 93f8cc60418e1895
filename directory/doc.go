// Package directory is the platform's customer directory in PostgreSQL
// (SPEC §5): the tables customers, customer_phones, customer_openids and
// customer_emails of each tenant (identity.Kinds says which kind lives where),
// what is asked of them and how they are filled.
//
//   - Look-ups (PGDirectory.Lookup) answer a chunk's identity values in one
//     round trip, one query per identity kind and tenant.
//   - FindOrCreate finds or creates the customers of isMatching=false
//     imports, with ids from 2^52 up (MaxLoadedCustomerID).
//   - The directory file format (line.go: DirectoryLine, its own JSON line
//     parser, LineError) and the Loader that `groupmatch directory load`
//     runs (load.go: COPY for new customers, merge for the others).
//
// Values are normalised by package identity, the same rules the matcher
// applies to records. The package knows nothing of stages or Kafka and
// never imports the matcher; the matcher reaches it through its own
// Directory interface.
//
// It never logs, and never puts an identity value (phone, openid,
// unionid, thirdId) in an error: errors name the field or line number.
package directory
