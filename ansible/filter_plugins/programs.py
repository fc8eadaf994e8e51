"""`program_packages`: the Debian packages scripts/programs.txt (the project's one
list of the programs it runs) names for some groups, so each role installs its
share of the same list that `make up` and CI install from."""


def program_packages(text, *groups):
    """Packages of the entries in any of `groups`; entries of group "all" always."""
    wanted = set(groups) | {"all"}
    packages = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        _program, package, entry_groups = fields
        if package != "project" and wanted & set(entry_groups.split(",")) and package not in packages:
            packages.append(package)
    return packages


class FilterModule:
    def filters(self):
        return {"program_packages": program_packages}
