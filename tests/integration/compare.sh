# compare.sh: profile comparisons shared by the client integration tests (source it).
#
#   same_profile A B   both are valid gzip and inflate to the same bytes (one-call and
#                      streaming deflate give the same profile, not the same gzip bytes)
#   same_dirs A B      every file of A is, once inflated, byte-identical in B, and both
#                      hold the same number of files

same_profile() { gzip -t "$1" 2>/dev/null && gzip -t "$2" 2>/dev/null && cmp -s <(gzip -dc "$1") <(gzip -dc "$2"); }

same_dirs() {
	local f rc=0
	for f in "$1"/*; do
		same_profile "$f" "$2/$(basename "$f")" || { echo "  differs: $(basename "$f") ($1 vs $2)"; rc=1; }
	done
	[[ $(ls "$1" | wc -l) == $(ls "$2" | wc -l) ]] || { echo "  file counts differ"; rc=1; }
	return $rc
}
