# The README's own command lines, for .ci/run and tests/test_readme.py: README and CI
# cannot drift. readme_line SECTION prints the first line of the first ```bash block
# under "## SECTION", without its trailing "# comment".
readme_line() {
    awk -v section="$1" '
        $0 == "## " section { inside = 1; next }
        /^## / { inside = 0 }
        inside && /^```bash/ { block = 1; next }
        inside && block { sub(/[ \t]+#.*$/, ""); print; exit }
    ' "${README:-README.md}"
}
