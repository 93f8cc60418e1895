#!/usr/bin/env bash
# Makes sure the jars of the Apache Kafka broker that the tests and
# `make kafka` run are in the cache devenv.KafkaLibsDir names:
#   $GROUPMATCH_KAFKA_LIBS, else ${XDG_CACHE_HOME:-~/.cache}/groupmatch/kafka-<version>/libs
#   (/var/tmp/groupmatch/kafka-<version>/libs without a home).
# The version is .ci/kafka/pom.xml's kafka.version. The jars are published
# artifacts fetched from Maven Central with Maven (installed from Debian
# when missing, with a Java runtime); nothing is written into the
# repository. Fast when the cache is complete; safe to run again; fails
# loudly when the jars cannot be had (the tests never skip for them).
set -euo pipefail
cd "$(dirname "$0")/kafka"

version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' pom.xml)
[ -n "$version" ] || { echo "ensure-kafka: no kafka.version in .ci/kafka/pom.xml" >&2; exit 1; }
if [ -n "${GROUPMATCH_KAFKA_LIBS:-}" ]; then
  libs=$GROUPMATCH_KAFKA_LIBS
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
  libs=$XDG_CACHE_HOME/groupmatch/kafka-$version/libs
elif [ -n "${HOME:-}" ]; then
  libs=$HOME/.cache/groupmatch/kafka-$version/libs
else
  libs=/var/tmp/groupmatch/kafka-$version/libs
fi
# A complete copy ends with this marker, written last.
marker=$libs/.complete
if [ -f "$marker" ] && cmp -s "$marker" pom.xml; then exit 0; fi

missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-kafka: installing ${missing[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
java_major=${java_major#1.}
if [ "${java_major:-0}" -lt 17 ]; then
  echo "ensure-kafka: java is version ${java_major:-unknown}; the broker needs 17 or later" >&2
  exit 1
fi

echo "ensure-kafka: fetching Apache Kafka $version into $libs" >&2
# Into a fresh folder beside the cache, then renamed into place: a broker
# already running from the old jars keeps them open, and a half-done copy
# is never taken for a complete one.
mkdir -p "$(dirname "$libs")"
tmp=$(mktemp -d "$libs.new.XXXXXX")
log=$tmp.log
trap 'rm -rf "$tmp" "$log"' EXIT
if ! mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure-kafka: Maven could not fetch Apache Kafka $version (see above); the tests need it" >&2
  exit 1
fi
if [ ! -f "$tmp/kafka_2.13-$version.jar" ]; then
  echo "ensure-kafka: kafka_2.13-$version.jar missing from what Maven copied" >&2
  exit 1
fi
cp pom.xml "$tmp/.complete"
rm -rf "$libs.old"
if [ -e "$libs" ]; then mv "$libs" "$libs.old"; fi
mv "$tmp" "$libs"
rm -rf "$libs.old"
echo "ensure-kafka: $(ls "$libs" | wc -l) jars in $libs" >&2
