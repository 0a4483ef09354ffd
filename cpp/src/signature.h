// sha256 and artifact signatures, with OpenSSL's libcrypto.
//
// The signed message and signature.json are defined in penni_deploy/artifact/signing.py; this is
// the same check: ECDSA P-256 / SHA-256 over
//   "penni-deploy-signature-v1\nmanifest.json <sha256(manifest)>\n<library name> <sha256(library)>\n"
#ifndef PENNI_SIGNATURE_H_
#define PENNI_SIGNATURE_H_

#include <string>

namespace penni {
namespace detail {

constexpr const char* kSignatureName = "signature.json";

std::string Sha256Hex(const std::string& bytes);

// Throw penni::Error unless `signature_json` (nullptr: the artifact is unsigned) signs the manifest
// and library with the private half of the EC P-256 public key in PEM file `trusted_key`.
void VerifySignature(const std::string& artifact, const std::string& manifest,
                     const std::string& library_name, const std::string& library_sha256,
                     const std::string* signature_json, const std::string& trusted_key);

}  // namespace detail
}  // namespace penni

#endif  // PENNI_SIGNATURE_H_
