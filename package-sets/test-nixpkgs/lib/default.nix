# The few parts of nixpkgs' lib the set uses.
{
  version = "99.01pre-test";
  licenses = {
    mit = { shortName = "mit"; spdxId = "MIT"; free = true; };
    unfree = { shortName = "unfree"; fullName = "Unfree"; free = false; };
  };
  # The attribute a package's meta.position would name, as check-meta prints it.
  getName = drv: drv.name;
}
