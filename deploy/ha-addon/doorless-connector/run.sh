#!/usr/bin/env bash
# Entry point of the doorless-connector add-on. The Supervisor writes the add-on's options to
# /data/options.json; this turns them into the connector's DOORLESS_* environment (see
# docs/config.md) and replaces itself with the connector.
set -euo pipefail

options="${DOORLESS_OPTIONS_FILE:-/data/options.json}"

if [[ ! -r "${options}" ]]; then
    echo "[doorless] ${options} not found: this script runs inside the Home Assistant add-on." >&2
    exit 1
fi

# `enrollment_code` takes a one-time code or an old `dl1.` token; `token` is the option's name
# in add-on versions before enrollment codes.
credential="$(jq -r '.enrollment_code // .token // ""' "${options}")"
upstream="$(jq -r '.upstream // "http://homeassistant:8123"' "${options}")"
log_level="$(jq -r '.log_level // "info"' "${options}")"
# How an https:// upstream is verified (docs/config.md); unset options stay unset, so the
# connector's own defaults and checks apply (at most one of the three; only for https://).
upstream_ca="$(jq -r '.upstream_ca // ""' "${options}")"
upstream_pin="$(jq -r '.upstream_pin_sha256 // ""' "${options}")"
upstream_insecure="$(jq -r '.upstream_tls_insecure // false' "${options}")"
# A code or token pasted from a terminal may carry line breaks or spaces; neither contains any.
credential="${credential//[[:space:]]/}"

if [[ -z "${credential}" ]]; then
    cat >&2 <<'MESSAGE'
[doorless] No enrollment code or token set.
[doorless] On your VPS run:  doorless-edge site add NAME --hostname YOUR.HOSTNAME
[doorless] (or `doorless-edge site code NAME` for an existing site), then paste the printed
[doorless] code into this add-on's Configuration tab (enrollment_code) and start it again.
MESSAGE
    exit 1
fi

case "${log_level}" in
    trace | debug)
        # Detail from doorless itself; the libraries stay at info (quinn at trace is a firehose).
        filter="info,connector=${log_level},doorless_connector=${log_level},transport=${log_level},proto=${log_level}"
        ;;
    info | warn | error)
        filter="${log_level}"
        ;;
    *)
        echo "[doorless] unknown log_level '${log_level}', using info" >&2
        filter="info"
        ;;
esac

if [[ "${credential}" == dl1.* ]]; then
    export DOORLESS_TOKEN="${credential}"
else
    # The connector enrolls once and keeps its key and certificate in /data (kept across
    # restarts and updates); the code is useless once used.
    export DOORLESS_ENROLLMENT_CODE="${credential}"
    export DOORLESS_STATE_DIR="${DOORLESS_STATE_DIR:-/data}"
fi
export DOORLESS_UPSTREAM="${upstream}"
if [[ -n "${upstream_ca}" ]]; then
    export DOORLESS_UPSTREAM_CA="${upstream_ca}"
fi
if [[ -n "${upstream_pin}" ]]; then
    export DOORLESS_UPSTREAM_PIN_SHA256="${upstream_pin}"
fi
if [[ "${upstream_insecure}" == true ]]; then
    export DOORLESS_UPSTREAM_TLS_INSECURE=true
fi
export DOORLESS_LOG__FILTER="${filter}"
export DOORLESS_LOG__FORMAT="${DOORLESS_LOG__FORMAT:-text}"

echo "[doorless] starting doorless-connector: upstream ${upstream}, log level ${log_level}" >&2
exec doorless-connector run
