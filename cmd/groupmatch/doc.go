// Command groupmatch imports enterprise customer groups into the platform
// and identifies every imported person among the platform's customers. It
// runs the stages of the pipeline (ingest, matcher, sink) alone or together
// (serve), a complete development system (dev), and the operator's tools
// (migrate, topics, app, directory, prune, healthcheck, version, bench).
// Run "groupmatch --help" for the list and "groupmatch <command> --help"
// for a command's flags, each also read from the environment variable its
// help names.
//
// This package only maps flags and the environment to the stages' Config
// structs and wires the stages together; no stage's rules live here.
package main
